//! Frames from a non-blocking socket, for an event loop that owns many connections.
//!
//! [`FrameReader`](super::FrameReader) keeps a 64 KiB buffer per connection, which is right for
//! a thread that owns one connection and wrong for a loop that owns ten thousand mostly idle
//! ones (640 MB of buffers). A [`FrameAssembler`] holds only the bytes it has not handed out
//! yet: the loop reads into one scratch buffer of its own and the assembler keeps what is left
//! of it — usually nothing, or part of one frame. An idle connection holds no buffer at all.
//!
//! The same limits hold as for the reader: a length prefix above
//! [`FRAME_BYTES_MAX`](crate::limits::FRAME_BYTES_MAX) is refused before anything is
//! allocated for it, and a frame longer than [`READ_BUFFER_BYTES`] is received only under a
//! reservation of its whole length from the server's [`ByteBudget`], returned once the frame
//! is decoded or the assembler dropped. Without room, [`FrameAssembler::read_from`] reads
//! nothing and says so; the loop tries again later while the frame's deadline runs.
//!
//! ```text
//!   socket ──read──► loop's scratch (64 KiB, shared) ──append──► assembler.pending
//!                                                                     │ next_frame()
//!                                                                     ▼
//!                                                        decoded frames, in order
//! ```
//!
//! Invariant: `pending.len() - start <= READ_BUFFER_BYTES`, or the reservation covers the
//! whole frame being received; reads are sized so it holds.

use std::io::Read;
use std::sync::Arc;

use crate::codec::{self, RecordRead};
use crate::limits::FRAME_BYTES_MAX;

use super::budget::{ByteBudget, Reservation};
use super::{Filled, FrameError, READ_BUFFER_BYTES};

/// The capacity kept for the next frames once everything buffered was consumed; a larger
/// buffer is freed, so a connection that went quiet after a burst holds little.
const RETAINED_BYTES_MAX: usize = 16 * 1024;

/// Splits the bytes of one non-blocking stream into frames, holding only unconsumed bytes.
#[derive(Debug)]
pub struct FrameAssembler {
    /// Unconsumed bytes are `pending[start..]`.
    pending: Vec<u8>,
    start: usize,
    budget: Arc<ByteBudget>,
    /// Covers the frame being received while it is longer than [`READ_BUFFER_BYTES`].
    reservation: Option<Reservation>,
    /// Whether the frame being received has been counted as waiting for the budget.
    counted_wait: bool,
}

impl FrameAssembler {
    /// An empty assembler whose frames larger than 64 KiB must fit in `budget`.
    pub fn new(budget: Arc<ByteBudget>) -> FrameAssembler {
        FrameAssembler {
            pending: Vec::new(),
            start: 0,
            budget,
            reservation: None,
            counted_wait: false,
        }
    }

    /// Decodes the next whole frame buffered, if any.
    pub fn next_frame<T: serde::de::DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        match codec::read_record(&self.pending[self.start..], FRAME_BYTES_MAX)? {
            RecordRead::Complete { payload, consumed } => {
                let value = codec::decode(payload);
                self.start += consumed;
                if self.start == self.pending.len() {
                    self.start = 0;
                    self.pending.clear();
                    if self.pending.capacity() > RETAINED_BYTES_MAX {
                        self.pending = Vec::new();
                    }
                }
                // The large frame (if it was one) is out: give its room back.
                self.reservation = None;
                Ok(Some(value?))
            }
            RecordRead::Incomplete { .. } => Ok(None),
        }
    }

    /// Whether part of a frame is buffered.
    pub fn has_partial(&self) -> bool {
        self.start < self.pending.len()
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.pending.len() - self.start
    }

    /// Bytes of memory held (for tests of idle connections).
    pub fn capacity(&self) -> usize {
        self.pending.capacity()
    }

    /// Reads once from `source` through `scratch` and keeps what arrived. Take every whole
    /// frame ([`next_frame`](FrameAssembler::next_frame)) before, or the buffer cannot make
    /// room. `WouldBlock` and other I/O errors are returned as [`FrameError::Io`].
    pub fn read_from(
        &mut self,
        source: &mut impl Read,
        scratch: &mut [u8],
    ) -> Result<Filled, FrameError> {
        if self.start > 0 {
            self.pending.drain(..self.start);
            self.start = 0;
        }
        let allowed = match self.frame_length()? {
            Some(length) if length > READ_BUFFER_BYTES => {
                if self.reservation.as_ref().map(Reservation::bytes) != Some(length as u64) {
                    let bytes = length as u64;
                    match self.budget.reserve_for_frame(bytes, &mut self.counted_wait) {
                        Some(reservation) => self.reservation = Some(reservation),
                        None => return Ok(Filled::WaitingForBudget { bytes }),
                    }
                }
                length
            }
            _ => READ_BUFFER_BYTES,
        };
        let room = allowed
            .saturating_sub(self.pending.len())
            .min(scratch.len());
        if room == 0 {
            // Whole frames are taken before reading: a full buffer holds one partial frame
            // that needs more room than it was given, which the checks above rule out.
            return Err(FrameError::Bad(crate::error::CodecError::Malformed {
                reason: format!(
                    "frame buffer full at {} bytes without a whole frame",
                    self.pending.len()
                ),
            }));
        }
        let read = source.read(&mut scratch[..room])?;
        if read == 0 {
            return Ok(Filled::End);
        }
        self.pending.extend_from_slice(&scratch[..read]);
        Ok(Filled::Bytes)
    }

    /// The whole length (header included) of the frame being received, once its header is
    /// buffered; refuses a length above the limit.
    fn frame_length(&self) -> Result<Option<usize>, FrameError> {
        match codec::read_record(&self.pending[self.start..], FRAME_BYTES_MAX)? {
            RecordRead::Incomplete { needed } => Ok(needed),
            // Not expected: whole frames are taken before reading.
            RecordRead::Complete { consumed, .. } => Ok(Some(consumed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::write_frame;

    /// A source that hands out its bytes in pieces of at most `step`.
    struct Trickle {
        bytes: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
            if self.at == self.bytes.len() {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let count = buffer.len().min(self.step).min(self.bytes.len() - self.at);
            buffer[..count].copy_from_slice(&self.bytes[self.at..self.at + count]);
            self.at += count;
            Ok(count)
        }
    }

    fn frames(values: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for value in values {
            write_frame(value, &mut out).unwrap();
        }
        out
    }

    fn drain(
        assembler: &mut FrameAssembler,
        source: &mut Trickle,
        scratch: &mut [u8],
    ) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        loop {
            while let Some(frame) = assembler.next_frame::<Vec<u8>>().unwrap() {
                got.push(frame);
            }
            match assembler.read_from(source, scratch) {
                Ok(Filled::Bytes) => {}
                Err(FrameError::Io(error)) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    return got
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_and_an_idle_assembler_holds_nothing() {
        let values: Vec<Vec<u8>> = (0..50u8).map(|n| vec![n; n as usize * 37]).collect();
        for step in [1, 7, 100, 4096, 1 << 20] {
            let budget = Arc::new(ByteBudget::new(1 << 20));
            let mut assembler = FrameAssembler::new(Arc::clone(&budget));
            let mut source = Trickle {
                bytes: frames(&values),
                at: 0,
                step,
            };
            let mut scratch = vec![0u8; READ_BUFFER_BYTES];
            assert_eq!(drain(&mut assembler, &mut source, &mut scratch), values);
            assert!(!assembler.has_partial());
            assert!(assembler.capacity() <= RETAINED_BYTES_MAX);
        }
    }

    #[test]
    fn a_large_frame_is_read_only_under_a_reservation_returned_after_it() {
        let large = vec![7u8; 3 * READ_BUFFER_BYTES];
        let whole = frames(std::slice::from_ref(&large)).len() as u64;
        // Room for everything but this frame: it waits, reading nothing past its header.
        let budget = Arc::new(ByteBudget::new(whole - 1));
        let mut assembler = FrameAssembler::new(Arc::clone(&budget));
        let mut source = Trickle {
            bytes: frames(std::slice::from_ref(&large)),
            at: 0,
            step: 1 << 20,
        };
        let mut scratch = vec![0u8; READ_BUFFER_BYTES];
        assert_eq!(
            assembler.read_from(&mut source, &mut scratch).unwrap(),
            Filled::Bytes
        );
        assert_eq!(
            assembler.read_from(&mut source, &mut scratch).unwrap(),
            Filled::WaitingForBudget { bytes: whole }
        );
        assert_eq!(budget.waits(), 1);
        assert!(assembler.buffered() <= READ_BUFFER_BYTES);

        let budget = Arc::new(ByteBudget::new(whole));
        let mut assembler = FrameAssembler::new(Arc::clone(&budget));
        source.at = 0;
        assert_eq!(
            drain(&mut assembler, &mut source, &mut scratch),
            vec![large]
        );
        assert_eq!(budget.reserved(), 0, "the reservation went back");
        assert_eq!(budget.reserved_max(), whole);
    }

    #[test]
    fn an_oversized_length_prefix_is_refused_before_allocating() {
        let budget = Arc::new(ByteBudget::new(u64::MAX / 2));
        let mut assembler = FrameAssembler::new(budget);
        let mut header = (u32::MAX).to_le_bytes().to_vec();
        header.extend_from_slice(&[0; 4]);
        let mut source = Trickle {
            bytes: header,
            at: 0,
            step: 100,
        };
        let mut scratch = vec![0u8; READ_BUFFER_BYTES];
        assembler.read_from(&mut source, &mut scratch).unwrap();
        assert!(matches!(
            assembler.next_frame::<Vec<u8>>(),
            Err(FrameError::Bad(_))
        ));
    }
}
