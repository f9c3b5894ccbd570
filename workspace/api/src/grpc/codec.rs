//! The protobuf codec of the `ovc.v1` services: prost's, except that a message that
//! does not decode is INVALID_ARGUMENT (reason `MALFORMED_PROTOBUF`), not INTERNAL.
//!
//! tonic-prost maps every decode error to INTERNAL, which API.md reserves for bugs; a
//! malformed request is bad input from the client. `build.rs` points the generated code
//! at [`ApiCodec`], so the generated clients use it too: a client that cannot decode an
//! answer also sees INVALID_ARGUMENT with this reason.

use crate::ApiError;
use prost::Message;
use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// prost encoding; decode errors are INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct ApiCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ApiCodec<T, U> {
    fn default() -> Self {
        ApiCodec(PhantomData)
    }
}

impl<T, U> Codec for ApiCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ApiDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ApiDecoder(ProstDecoder::default())
    }
}

/// prost's decoder with the INVALID_ARGUMENT mapping.
#[derive(Debug, Clone)]
pub struct ApiDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for ApiDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|e| {
            ApiError::invalid(
                format!("malformed protobuf message: {}", e.message()),
                "MALFORMED_PROTOBUF",
            )
            .into()
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
