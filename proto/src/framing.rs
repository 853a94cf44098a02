//! Checks the gRPC framing of request bodies before tonic reads them, so that
//! a malformed body is `INVALID_ARGUMENT`, not `INTERNAL`.
//!
//! tonic parses the length-prefixed frames itself (`tonic::codec::Streaming`)
//! and answers `INTERNAL` for a body that ends inside a frame ("Unexpected
//! EOF decoding stream."), for a compressed flag other than 0 and 1, for
//! flag 1 without a `grpc-encoding` (the gRPC compression spec asks for
//! INTERNAL there; the mesh keeps INTERNAL for its own bugs), and for a unary
//! or server-streaming call whose body holds no message at all ("Missing
//! request message."). None of that reaches a codec, and tonic offers no hook
//! between its frame parser and the service. So [`RequestFramingLayer`] wraps
//! the request body of every gRPC call with a frame-by-frame checker that
//! sees the same bytes first: when they break the framing it fails the body
//! with an `INVALID_ARGUMENT` status (`ErrorInfo` reason
//! [`MALFORMED_REQUEST`](crate::codec::MALFORMED_REQUEST)), which tonic finds
//! in the body error and returns as it is. Wrapping the body rather than
//! rewriting tonic's answers keeps the decision structural: nothing matches
//! tonic's error messages.
//!
//! It also refuses a second message on a method that takes one (tonic would
//! read the first and silently drop the rest), so that trailing bytes never
//! go unnoticed.
//!
//! Left to tonic, as they are not INTERNAL: a declared length above the
//! server's limit (`OUT_OF_RANGE`, seen from the frame header before the body
//! is read) and a `grpc-encoding` the server does not accept
//! (`UNIMPLEMENTED`, from the headers). The payload is not inspected here; a
//! payload that does not decode is the codec's (see [`crate::codec`]).

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::codec::{METHODS, malformed_request};

/// Paths of the methods whose request is exactly one message (unary and
/// server-streaming); client-streaming ones, and paths this crate does not
/// generate (reflection), get the frame checks only.
static SINGLE_MESSAGE_METHODS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    METHODS
        .iter()
        .filter(|m| !m.client_streaming)
        .map(|m| m.path)
        .collect()
});

/// gRPC frame header: compressed flag (1 byte) and length (4, big-endian).
const HEADER_SIZE: usize = 5;

/// Tower layer checking the framing of every gRPC request body.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFramingLayer;

impl<S> Layer<S> for RequestFramingLayer {
    type Service = RequestFraming<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestFraming { inner }
    }
}

/// See [`RequestFramingLayer`].
#[derive(Debug, Clone)]
pub struct RequestFraming<S> {
    inner: S,
}

impl<S> Service<http::Request<Body>> for RequestFraming<S>
where
    S: Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let is_grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if !is_grpc {
            return self.inner.call(request);
        }
        let path: Arc<str> = Arc::from(request.uri().path());
        let check = FrameCheck {
            single_message: SINGLE_MESSAGE_METHODS.contains(&*path),
            // Flag 1 is fine when the call names an encoding; tonic then
            // decompresses it, or refuses an encoding it does not accept
            // before reading the body.
            compressed_allowed: request
                .headers()
                .get("grpc-encoding")
                .is_some_and(|v| v.as_bytes() != b"identity"),
            path,
            messages: 0,
            state: State::Header {
                bytes: [0; HEADER_SIZE],
                have: 0,
            },
        };
        self.inner.call(request.map(|body| {
            Body::new(CheckedBody {
                inner: body,
                check,
                pending: None,
                finished: false,
            })
        }))
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading a frame header; `have` bytes of it so far.
    Header {
        bytes: [u8; HEADER_SIZE],
        have: usize,
    },
    /// Inside a frame's payload, `left` bytes to go.
    Payload { left: u64 },
}

#[derive(Debug)]
struct FrameCheck {
    path: Arc<str>,
    single_message: bool,
    compressed_allowed: bool,
    /// Frames whose header was read.
    messages: u64,
    state: State,
}

impl FrameCheck {
    fn malformed(&self, what: &str) -> Status {
        malformed_request(
            format!("request to {} is not well-formed gRPC: {what}", self.path),
            HashMap::from([("path".to_owned(), self.path.to_string())]),
        )
    }

    /// Follows the frames through `data`. On a violation, returns how many
    /// leading bytes of `data` are still good (those before the offending
    /// frame header) and the status to fail the body with.
    fn feed(&mut self, data: &[u8]) -> Result<(), (usize, Status)> {
        let mut at = 0;
        while at < data.len() {
            match &mut self.state {
                State::Header { bytes, have } => {
                    let header_start = at.saturating_sub(*have);
                    if *have == 0 && self.single_message && self.messages >= 1 {
                        return Err((
                            at,
                            self.malformed("a second message on a method that takes one"),
                        ));
                    }
                    let take = (HEADER_SIZE - *have).min(data.len() - at);
                    bytes[*have..*have + take].copy_from_slice(&data[at..at + take]);
                    *have += take;
                    at += take;
                    if *have < HEADER_SIZE {
                        continue;
                    }
                    let flag = bytes[0];
                    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
                    match flag {
                        0 => {}
                        1 if self.compressed_allowed => {}
                        1 => {
                            return Err((
                                header_start,
                                self.malformed(
                                    "a compressed message but no grpc-encoding for the call",
                                ),
                            ));
                        }
                        other => {
                            return Err((
                                header_start,
                                self.malformed(&format!(
                                    "compressed flag {other} (only 0 and 1 are valid)"
                                )),
                            ));
                        }
                    }
                    self.messages += 1;
                    self.state = if len == 0 {
                        State::Header {
                            bytes: [0; HEADER_SIZE],
                            have: 0,
                        }
                    } else {
                        State::Payload {
                            left: u64::from(len),
                        }
                    };
                }
                State::Payload { left } => {
                    let available = u64::try_from(data.len() - at).unwrap_or(u64::MAX);
                    let take = (*left).min(available);
                    // `take` <= the bytes left in `data`, so it fits a usize.
                    at += usize::try_from(take).unwrap_or(data.len() - at);
                    *left -= take;
                    if *left == 0 {
                        self.state = State::Header {
                            bytes: [0; HEADER_SIZE],
                            have: 0,
                        };
                    }
                }
            }
        }
        Ok(())
    }

    /// At the end of the body (or at its trailers).
    fn end(&self) -> Result<(), Status> {
        match self.state {
            State::Header { have: 0, .. } => {}
            State::Header { have, .. } => {
                return Err(self.malformed(&format!(
                    "the body ends {have} bytes into a {HEADER_SIZE}-byte frame header"
                )));
            }
            State::Payload { left } => {
                return Err(self.malformed(&format!(
                    "the body ends {left} bytes short of its frame's declared length"
                )));
            }
        }
        if self.single_message && self.messages == 0 {
            return Err(self.malformed("no request message"));
        }
        Ok(())
    }
}

/// A request body passed through [`FrameCheck`].
struct CheckedBody {
    inner: Body,
    check: FrameCheck,
    /// A violation found after the good bytes just yielded.
    pending: Option<Status>,
    finished: bool,
}

impl HttpBody for CheckedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some(status) = this.pending.take() {
            this.finished = true;
            return Poll::Ready(Some(Err(status)));
        }
        let status = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            // A transport error (the client reset the stream) is tonic's.
            Some(Err(status)) => status,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => match this.check.feed(&data) {
                    Ok(()) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Err((0, status)) => status,
                    Err((good, status)) => {
                        this.pending = Some(status);
                        return Poll::Ready(Some(Ok(Frame::data(data.slice(..good)))));
                    }
                },
                Err(trailers) => match this.check.end() {
                    Ok(()) => return Poll::Ready(Some(Ok(trailers))),
                    Err(status) => status,
                },
            },
            None => match this.check.end() {
                Ok(()) => {
                    this.finished = true;
                    return Poll::Ready(None);
                }
                Err(status) => status,
            },
        };
        this.finished = true;
        Poll::Ready(Some(Err(status)))
    }

    fn is_end_stream(&self) -> bool {
        // Never ahead of the end check: an empty body must still be polled
        // once, to be refused when its method needs a message.
        self.finished && self.pending.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{BodyExt, Full};
    use tonic::Code;
    use tonic_types::StatusExt;

    use super::*;
    use crate::codec::MALFORMED_REQUEST;

    const CHECK: &str = "/grpc.health.v1.Health/Check";
    const REFLECTION: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";

    /// The health server behind the layer, called in process.
    async fn call(path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Status {
        let (reporter, health) = crate::health::health_reporter();
        reporter
            .set_service_status(
                "commerce.point.v1.PointService",
                tonic_health::ServingStatus::Serving,
            )
            .await;
        let mut service = RequestFramingLayer.layer(health);
        let mut request = http::Request::builder()
            .method("POST")
            .uri(format!("http://localhost{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Body::new(
                Full::new(Bytes::from(body)).map_err(|e: Infallible| match e {}),
            ))
            .unwrap();
        let response = service.call(request).await.unwrap();
        if let Some(status) = Status::from_header_map(response.headers()) {
            return status;
        }
        let collected = response.into_body().collect().await.unwrap();
        Status::from_header_map(collected.trailers().unwrap()).unwrap()
    }

    /// A frame: flag, big-endian length, payload.
    fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![flag];
        bytes.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    /// `HealthCheckRequest { service: "commerce.point.v1.PointService" }`.
    fn point_service() -> Vec<u8> {
        let name = b"commerce.point.v1.PointService";
        let mut message = vec![0x0a, u8::try_from(name.len()).unwrap()];
        message.extend_from_slice(name);
        message
    }

    #[track_caller]
    fn assert_malformed(status: &Status, what: &str) {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(what), "{status:?}");
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, MALFORMED_REQUEST);
    }

    #[tokio::test]
    async fn a_well_formed_request_passes() {
        let status = call(CHECK, &[], frame(0, &point_service())).await;
        assert_eq!(status.code(), Code::Ok, "{status:?}");
        // An empty message is a message: the overall status "".
        let status = call(CHECK, &[], frame(0, &[])).await;
        assert_eq!(status.code(), Code::Ok, "{status:?}");
    }

    #[tokio::test]
    async fn a_payload_that_does_not_decode_is_invalid_argument() {
        let status = call(CHECK, &[], frame(0, &[0x0a, 0x02, 0xff, 0xfe])).await;
        assert_malformed(&status, "grpc.health.v1.HealthCheckRequest");
    }

    #[tokio::test]
    async fn broken_frames_are_invalid_argument() {
        let whole = frame(0, &point_service());
        for cut in [1, 3, HEADER_SIZE, HEADER_SIZE + 4, whole.len() - 1] {
            let status = call(CHECK, &[], whole[..cut].to_vec()).await;
            assert_malformed(&status, "the body ends");
        }
        assert_malformed(&call(CHECK, &[], vec![]).await, "no request message");
        assert_malformed(
            &call(CHECK, &[], frame(2, &point_service())).await,
            "compressed flag 2",
        );
        assert_malformed(
            &call(CHECK, &[], frame(1, &point_service())).await,
            "no grpc-encoding",
        );
        assert_malformed(
            &call(CHECK, &[("grpc-encoding", "identity")], frame(1, &[])).await,
            "no grpc-encoding",
        );
        let mut two = frame(0, &point_service());
        two.extend(frame(0, &point_service()));
        assert_malformed(&call(CHECK, &[], two).await, "a second message");
    }

    #[tokio::test]
    async fn what_tonic_answers_without_internal_is_left_to_it() {
        let mut oversize = vec![0, 0x7f, 0, 0, 0];
        oversize.extend_from_slice(&[0; 16]);
        assert_eq!(call(CHECK, &[], oversize).await.code(), Code::OutOfRange);
        let status = call(CHECK, &[("grpc-encoding", "gzip")], frame(1, &[1, 2])).await;
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    }

    #[test]
    fn streams_are_followed_across_chunks_and_only_single_message_methods_count() {
        let mut check = FrameCheck {
            path: Arc::from(REFLECTION),
            single_message: SINGLE_MESSAGE_METHODS.contains(REFLECTION),
            compressed_allowed: false,
            messages: 0,
            state: State::Header {
                bytes: [0; HEADER_SIZE],
                have: 0,
            },
        };
        assert!(!check.single_message);
        assert!(check.end().is_ok(), "a stream may carry no message");
        let mut bytes = frame(0, b"abc");
        bytes.extend(frame(0, b""));
        bytes.extend(frame(0, b"defgh"));
        for chunk in bytes.chunks(2) {
            check.feed(chunk).unwrap();
        }
        assert_eq!(check.messages, 3);
        check.end().unwrap();
        let (good, status) = check.feed(&frame(3, b"x")).unwrap_err();
        assert_eq!((good, status.code()), (0, Code::InvalidArgument));

        let mut single = FrameCheck {
            path: Arc::from(CHECK),
            single_message: SINGLE_MESSAGE_METHODS.contains(CHECK),
            compressed_allowed: false,
            messages: 0,
            state: State::Header {
                bytes: [0; HEADER_SIZE],
                have: 0,
            },
        };
        assert!(single.single_message);
        let mut two = frame(0, b"abc");
        let first = two.len();
        two.extend(frame(0, b"abc"));
        let (good, _) = single.feed(&two).unwrap_err();
        assert_eq!(
            good, first,
            "the first message passes, the second is refused"
        );
    }
}
