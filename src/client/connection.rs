//! One multiplexed client connection: many threads send requests over it at once, and one
//! receiver thread hands each response to the caller waiting for its request id.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::protocol::{write_frame, FrameReader, RequestBody, RequestFrame, ResponseFrame};

/// Why a call on a connection failed.
#[derive(Debug)]
pub(super) enum CallError {
    /// The connection broke. `sent` says whether the request may have reached the server.
    Failed { sent: bool, reason: String },
    /// No response before the deadline (the request may have been served).
    TimedOut,
}

/// Callers waiting for a response, by request id, and whether the connection broke.
struct Waiting {
    callers: Mutex<HashMap<u64, Sender<ResponseFrame>>>,
    broken: AtomicBool,
    reason: Mutex<String>,
}

impl Waiting {
    fn fail(&self, reason: String) {
        *self.reason.lock() = reason;
        self.broken.store(true, Ordering::SeqCst);
        // Dropping the senders wakes every caller with `Disconnected`.
        self.callers.lock().clear();
    }
}

/// Frames waiting to be written, and whether a caller is writing them now.
#[derive(Default)]
struct Outgoing {
    buffer: Vec<u8>,
    writing: bool,
}

/// A connection to one server address.
///
/// Writes are combined: a caller appends its frame to `outgoing`; if no other caller is
/// writing, it writes everything queued (its own frame and any that arrive meanwhile) until
/// the queue is empty. Under load many frames leave in one `write` call, with no extra thread.
pub(super) struct Connection {
    stream: TcpStream,
    outgoing: Mutex<Outgoing>,
    waiting: Arc<Waiting>,
    receiver: Option<JoinHandle<()>>,
    next_request_id: AtomicU64,
}

impl Connection {
    /// Connects to `address` (host:port), trying each address it resolves to. A write that
    /// blocks longer than `write_timeout` (a server that stops reading) breaks the connection.
    pub(super) fn open(
        address: &str,
        timeout: Duration,
        write_timeout: Duration,
    ) -> std::io::Result<Connection> {
        let addresses: Vec<SocketAddr> = address.to_socket_addrs()?.collect();
        let mut last_error = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{address} resolves to no address"),
        );
        let mut stream = None;
        for socket_address in addresses {
            match TcpStream::connect_timeout(&socket_address, timeout) {
                Ok(connected) => {
                    stream = Some(connected);
                    break;
                }
                Err(error) => last_error = error,
            }
        }
        let stream = stream.ok_or(last_error)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(write_timeout.max(Duration::from_millis(1))))?;
        let mut read_stream = stream.try_clone()?;
        let waiting = Arc::new(Waiting {
            callers: Mutex::new(HashMap::new()),
            broken: AtomicBool::new(false),
            reason: Mutex::new(String::new()),
        });
        let receiver_waiting = Arc::clone(&waiting);
        let receiver = std::thread::Builder::new()
            // A fixed name: the address may come from a server's redirect.
            .name("kvclient-recv".to_string())
            .spawn(move || {
                let mut frames = FrameReader::new();
                loop {
                    match frames.read_frame::<ResponseFrame>(&mut read_stream) {
                        Ok(frame) => {
                            let caller = receiver_waiting.callers.lock().remove(&frame.request_id);
                            if let Some(caller) = caller {
                                let _ = caller.try_send(frame);
                            }
                        }
                        Err(error) => {
                            receiver_waiting.fail(error.to_string());
                            let _ = read_stream.shutdown(Shutdown::Both);
                            return;
                        }
                    }
                }
            })?;
        Ok(Connection {
            stream,
            outgoing: Mutex::new(Outgoing::default()),
            waiting,
            receiver: Some(receiver),
            next_request_id: AtomicU64::new(1),
        })
    }

    /// Whether the connection broke.
    pub(super) fn is_broken(&self) -> bool {
        self.waiting.broken.load(Ordering::SeqCst)
    }

    /// Sends `body` and waits until `deadline` for its response. The server is told it may
    /// work for `server_timeout`.
    pub(super) fn call(
        &self,
        body: &RequestBody,
        server_timeout: Duration,
        deadline: Instant,
    ) -> Result<ResponseFrame, CallError> {
        if self.is_broken() {
            return Err(CallError::Failed {
                sent: false,
                reason: self.waiting.reason.lock().clone(),
            });
        }
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let frame = RequestFrame {
            request_id,
            timeout_ms: (server_timeout.as_millis() as u64).max(1),
            body: body.clone(),
        };
        let (sender, receiver) = crossbeam_channel::bounded(1);
        self.waiting.callers.lock().insert(request_id, sender);
        // A break between the first check and the insert would leave us waiting in vain.
        if self.is_broken() {
            self.waiting.callers.lock().remove(&request_id);
            return Err(CallError::Failed {
                sent: false,
                reason: self.waiting.reason.lock().clone(),
            });
        }
        if let Err(error) = self.send(&frame) {
            self.waiting.callers.lock().remove(&request_id);
            return Err(error);
        }
        match receiver.recv_deadline(deadline) {
            Ok(frame) => Ok(frame),
            Err(RecvTimeoutError::Timeout) => {
                self.waiting.callers.lock().remove(&request_id);
                Err(CallError::TimedOut)
            }
            Err(RecvTimeoutError::Disconnected) => Err(CallError::Failed {
                sent: true,
                reason: self.waiting.reason.lock().clone(),
            }),
        }
    }

    /// Queues `frame` and, unless another caller is writing, writes everything queued.
    fn send(&self, frame: &RequestFrame) -> Result<(), CallError> {
        {
            let mut outgoing = self.outgoing.lock();
            write_frame(frame, &mut outgoing.buffer).map_err(|error| CallError::Failed {
                sent: false,
                reason: error.to_string(),
            })?;
            if outgoing.writing {
                return Ok(()); // the caller writing now takes our frame along
            }
            outgoing.writing = true;
        }
        let mut batch = Vec::new();
        loop {
            {
                let mut outgoing = self.outgoing.lock();
                if outgoing.buffer.is_empty() {
                    outgoing.writing = false;
                    return Ok(());
                }
                std::mem::swap(&mut batch, &mut outgoing.buffer);
            }
            if let Err(error) = (&self.stream).write_all(&batch) {
                self.outgoing.lock().writing = false;
                self.close();
                // Part of a frame may have gone out: the server may have it.
                return Err(CallError::Failed {
                    sent: true,
                    reason: error.to_string(),
                });
            }
            batch.clear();
        }
    }

    /// Closes the socket; waiting callers fail.
    pub(super) fn close(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        self.waiting.fail("connection closed".into());
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
        if let Some(receiver) = self.receiver.take() {
            let _ = receiver.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::protocol::{FrameReader, ServerError};

    fn busy(reason: &str) -> ResponseFrame {
        ResponseFrame {
            request_id: 0,
            result: Err(ServerError::Busy {
                reason: reason.to_string(),
            }),
        }
    }

    /// A caller that gave up is not answered later with someone else's response, nor is the
    /// next caller answered with the late response to the abandoned request.
    #[test]
    fn a_late_answer_to_an_abandoned_request_goes_to_no_one_else() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut frames = FrameReader::new();
            let first: RequestFrame = frames.read_frame(&mut stream).unwrap();
            // The second request arrives only after the first caller gave up.
            let second: RequestFrame = frames.read_frame(&mut stream).unwrap();
            let mut bytes = Vec::new();
            for (request, reason) in [(&first, "late answer to the first"), (&second, "second")] {
                let frame = ResponseFrame {
                    request_id: request.request_id,
                    ..busy(reason)
                };
                write_frame(&frame, &mut bytes).unwrap();
            }
            stream.write_all(&bytes).unwrap();
            // Hold the connection until the client closes it.
            let _ = frames.read_frame::<RequestFrame>(&mut stream);
        });
        let timeout = Duration::from_secs(10);
        let connection = Connection::open(&address, timeout, timeout).unwrap();
        let abandoned = connection.call(
            &RequestBody::Status,
            timeout,
            Instant::now() + Duration::from_millis(50),
        );
        assert!(
            matches!(abandoned, Err(CallError::TimedOut)),
            "{abandoned:?}"
        );
        let answered = connection
            .call(&RequestBody::Status, timeout, Instant::now() + timeout)
            .unwrap();
        assert_eq!(answered.result, busy("second").result);
        drop(connection);
        server.join().unwrap();
    }
}
