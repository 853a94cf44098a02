//! Generated gRPC types, clients and servers of the commerce mesh, one module
//! per versioned proto package, plus the descriptor set servers publish
//! through reflection, and how every server reads request bytes: the codec of
//! every generated service ([`codec`]), the gRPC framing check in front of
//! them ([`framing`]) and the health service decoded the same way
//! ([`health`]).

pub mod codec;
pub mod framing;
pub mod health;

/// The prost the generated code uses, for callers that decode descriptors or
/// raw messages themselves.
pub use prost;

/// Encoded `FileDescriptorSet` of every contract, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/commerce_descriptor.bin"));

pub mod product {
    pub mod v1 {
        tonic::include_proto!("commerce.product.v1");
    }
}

pub mod point {
    pub mod v1 {
        tonic::include_proto!("commerce.point.v1");
    }
}

pub mod coupon {
    pub mod v1 {
        tonic::include_proto!("commerce.coupon.v1");
    }
}

pub mod order {
    pub mod v1 {
        tonic::include_proto!("commerce.order.v1");
    }
}

/// Events published to Redis streams (not a service: messages only).
pub mod events {
    pub mod v1 {
        tonic::include_proto!("commerce.events.v1");
    }
}

pub mod saga {
    pub mod v1 {
        tonic::include_proto!("commerce.saga.v1");
    }
}
