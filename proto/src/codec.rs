//! The codec of every generated server and client (`codec_path` in
//! `build.rs`): `tonic_prost::ProstCodec`, except for what bytes that do not
//! decode become.
//!
//! tonic-prost answers every decode failure `INTERNAL`, but a request that
//! does not decode is the caller's mistake, and the mesh keeps `INTERNAL` for
//! its own bugs. So a server that cannot decode a request answers
//! `INVALID_ARGUMENT`, with a `google.rpc.ErrorInfo` (reason
//! [`MALFORMED_REQUEST`]) and a message naming the message type. A client
//! that cannot decode a response still reports `INTERNAL` (the peer or the
//! contract is broken, not the caller's input), naming the type too; the
//! orchestrator retries that instead of reading it as a participant's
//! refusal.
//!
//! The codec cannot tell a server from a client, so the message type does:
//! `build.rs` implements [`DecodeTarget`] for every message a method takes
//! (decoded by servers) or returns (decoded by clients).
//!
//! Encoding is tonic-prost's, unchanged. Framing errors (a body that ends
//! inside a frame, a bad compressed flag) happen before a message reaches
//! the codec: see [`crate::framing`].

use std::collections::HashMap;
use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of the mesh's errors. The same value as
/// `commerce_platform::error::ERROR_DOMAIN`, which this crate cannot name
/// (the platform depends on it); the end-to-end fuzz test checks they agree.
pub const ERROR_DOMAIN: &str = "commerce";

/// `ErrorInfo.reason` of a request whose bytes do not decode as its message
/// or are not well-formed gRPC frames.
pub const MALFORMED_REQUEST: &str = "MALFORMED_REQUEST";

/// Whether a message type is decoded by servers (a method's input) or by
/// clients (a method's output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeRole {
    Request,
    Response,
}

/// A message the codec decodes: implemented by `build.rs` for every input
/// and output of every method.
pub trait DecodeTarget {
    /// Fully qualified proto name, as in `commerce.point.v1.ChargeRequest`.
    const PROTO_NAME: &'static str;
    const ROLE: DecodeRole;
}

/// One RPC of the generated services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodInfo {
    /// `/package.Service/Method`.
    pub path: &'static str,
    /// Fully qualified proto name of the request message.
    pub input: &'static str,
    /// Fully qualified proto name of the response message.
    pub output: &'static str,
    pub client_streaming: bool,
    pub server_streaming: bool,
}

include!(concat!(env!("OUT_DIR"), "/methods.rs"));

/// Whether `bytes` decode as the message named `proto_name`, exactly as this
/// codec decodes it; `None` when no method of this crate takes or returns a
/// message of that name. For tests that must send only bytes no server
/// accepts.
pub fn decodes_as(proto_name: &str, bytes: &[u8]) -> Option<bool> {
    decode_by_name(proto_name, bytes).map(|decoded| decoded.is_ok())
}

/// The `INVALID_ARGUMENT` of a request the server cannot read: `message`
/// says what is wrong, `metadata` goes into the `ErrorInfo`.
pub fn malformed_request(message: String, metadata: HashMap<String, String>) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(MALFORMED_REQUEST, ERROR_DOMAIN, metadata);
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// What a decode failure of a `U` becomes; `cause` is prost's description.
fn decode_failure<U: DecodeTarget>(cause: &str) -> Status {
    match U::ROLE {
        DecodeRole::Request => malformed_request(
            format!("request does not decode as {}: {cause}", U::PROTO_NAME),
            HashMap::from([("message".to_owned(), U::PROTO_NAME.to_owned())]),
        ),
        DecodeRole::Response => Status::internal(format!(
            "response does not decode as {}: {cause}",
            U::PROTO_NAME
        )),
    }
}

/// `tonic_prost::ProstCodec` with [`CommerceDecoder`].
#[derive(Debug, Clone)]
pub struct CommerceCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for CommerceCodec<T, U> {
    fn default() -> Self {
        Self {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for CommerceCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + DecodeTarget + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CommerceDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CommerceDecoder {
            inner: self.inner.decoder(),
            _message: PhantomData,
        }
    }
}

/// `tonic_prost::ProstDecoder`, whose only failure (the bytes do not decode)
/// becomes `INVALID_ARGUMENT` for a request, `INTERNAL` for a response.
#[derive(Debug, Clone)]
pub struct CommerceDecoder<U> {
    inner: ProstDecoder<U>,
    _message: PhantomData<U>,
}

impl<U: Message + Default + DecodeTarget> Decoder for CommerceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.inner
            .decode(buf)
            .map_err(|status| decode_failure::<U>(status.message()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt;

    use super::*;
    use crate::point::v1::{Balance, ChargeRequest};

    #[test]
    fn every_method_input_decodes_as_a_request_and_every_pure_output_as_a_response() {
        assert!(!METHODS.is_empty());
        for method in METHODS {
            assert_eq!(decodes_as(method.input, &[]), Some(true), "{method:?}");
            assert_eq!(decodes_as(method.output, &[]), Some(true), "{method:?}");
            // Field number 0 is never valid.
            assert_eq!(decodes_as(method.input, &[0x00]), Some(false));
        }
        assert_eq!(<ChargeRequest as DecodeTarget>::ROLE, DecodeRole::Request);
        assert_eq!(<Balance as DecodeTarget>::ROLE, DecodeRole::Response);
        assert_eq!(
            <tonic_health::pb::HealthCheckRequest as DecodeTarget>::ROLE,
            DecodeRole::Request
        );
        assert_eq!(decodes_as("no.such.Message", &[]), None);
    }

    #[test]
    fn an_undecodable_request_is_invalid_argument_naming_its_type() {
        // user_id (field 1, a string) holding bytes that are not UTF-8.
        let status = decode_failure::<ChargeRequest>(
            &ChargeRequest::decode(&[0x0a, 0x02, 0xff, 0xfe][..])
                .unwrap_err()
                .to_string(),
        );
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("commerce.point.v1.ChargeRequest"),
            "{status:?}"
        );
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, MALFORMED_REQUEST);
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata["message"], "commerce.point.v1.ChargeRequest");
    }

    #[test]
    fn an_undecodable_response_stays_internal() {
        let status = decode_failure::<Balance>("bad");
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().contains("commerce.point.v1.Balance"));
    }
}
