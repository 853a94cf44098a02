//! Generated gRPC types, clients and servers of the commerce mesh, one module
//! per versioned proto package, plus the descriptor set servers publish
//! through reflection.

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

pub mod saga {
    pub mod v1 {
        tonic::include_proto!("commerce.saga.v1");
    }
}
