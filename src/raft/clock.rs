//! Time as data. The core never reads a clock: the runtime reads its monotonic clock and hands
//! the reading in as a [`Monotonic`]; the deterministic harnesses hand in virtual time.

/// A reading of a monotonic clock: nanoseconds since an origin the caller chooses (the runtime
/// uses the moment the node started). Only differences between readings of the same clock mean
/// anything; readings from different nodes are never compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Monotonic(pub u64);

impl Monotonic {
    /// The reading `nanos` nanoseconds later (saturating).
    pub fn plus_nanos(self, nanos: u64) -> Monotonic {
        Monotonic(self.0.saturating_add(nanos))
    }
}
