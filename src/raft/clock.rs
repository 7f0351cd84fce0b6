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

/// How many ticks of `tick_nanos` the clock has completed at `now` beyond the `ticks` already
/// counted: the catch-up owed after a pause. Zero if `now` is not past the next tick boundary.
pub(crate) fn ticks_due(ticks: u64, now: Monotonic, tick_nanos: u64) -> u64 {
    debug_assert!(tick_nanos > 0, "validated by Config");
    (now.0 / tick_nanos).saturating_sub(ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_pause_is_owed_every_tick_it_spans() {
        // 600 ms stopped with 10 ms ticks: 60 ticks, not the one a dropping ticker would give.
        assert_eq!(ticks_due(0, Monotonic(600 * MS), 10 * MS), 60);
        assert_eq!(ticks_due(100, Monotonic(1_600 * MS + 9 * MS), 10 * MS), 60);
    }

    #[test]
    fn a_partial_tick_is_not_owed_until_it_completes() {
        assert_eq!(ticks_due(5, Monotonic(59 * MS), 10 * MS), 0);
        assert_eq!(ticks_due(5, Monotonic(60 * MS), 10 * MS), 1);
        // An older reading owes nothing.
        assert_eq!(ticks_due(9, Monotonic(10 * MS), 10 * MS), 0);
    }
}
