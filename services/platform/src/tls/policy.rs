//! Who may call what: one table per server, read top to bottom.
//!
//! - saga actions and compensations, quotes and reservation reads: the
//!   orchestrator only;
//! - product, coupon, saga and barrier admin: operators; shipping states:
//!   operators and fulfilment;
//! - user-facing calls: the BFF (which vouches for the user) and operators;
//! - health: any peer that completed the handshake; reflection: operators.
//!
//! Services whose every method has the same callers (admin services, health,
//! reflection) have one rule ending in `/`; the others list each method, so
//! a new RPC has no rule, is refused, and fails
//! `every_served_method_has_a_rule` until someone decides who may call it.

use super::authorize::{Callers, Rule};

const ORCHESTRATOR: Callers = Callers::Only(&["orchestrator"]);
const OPERATOR: Callers = Callers::Only(&["operator"]);
const SHIPPING: Callers = Callers::Only(&["operator", "fulfilment"]);
const USER_FACING: Callers = Callers::Only(&["bff", "operator"]);

const fn rule(method: &'static str, callers: Callers) -> Rule {
    Rule { method, callers }
}

/// Served by every server.
const HEALTH_AND_REFLECTION: [Rule; 3] = [
    rule("/grpc.health.v1.Health/", Callers::AnyPeer),
    rule("/grpc.reflection.v1.ServerReflection/", OPERATOR),
    rule("/grpc.reflection.v1alpha.ServerReflection/", OPERATOR),
];

/// Served by every saga participant: operators' view of the barrier; the
/// orchestrator reads it too, to reconcile its sagas with what each
/// participant holds (a method rule, read before the service-wide one).
const BARRIER_READ: Rule = rule(
    "/commerce.saga.v1.SagaBarrierService/ListBarriers",
    Callers::Only(&["operator", "orchestrator"]),
);
const BARRIER_ADMIN: Rule = rule("/commerce.saga.v1.SagaBarrierService/", OPERATOR);

#[rustfmt::skip]
pub const PRODUCT: &[Rule] = &[
    HEALTH_AND_REFLECTION[0], HEALTH_AND_REFLECTION[1], HEALTH_AND_REFLECTION[2],
    BARRIER_READ, BARRIER_ADMIN,
    rule("/commerce.product.v1.ProductAdminService/",                 OPERATOR),
    rule("/commerce.product.v1.StockService/ReserveStock",            ORCHESTRATOR),
    rule("/commerce.product.v1.StockService/ConfirmReservation",      ORCHESTRATOR),
    rule("/commerce.product.v1.StockService/ReleaseReservation",      ORCHESTRATOR),
    rule("/commerce.product.v1.StockService/GetReservation",          ORCHESTRATOR),
    rule("/commerce.product.v1.CatalogService/GetProduct",            USER_FACING),
    rule("/commerce.product.v1.CatalogService/ListProducts",          USER_FACING),
    rule("/commerce.product.v1.CatalogService/ListPopularProducts",   USER_FACING),
    rule("/commerce.product.v1.CatalogService/GetBrand",              USER_FACING),
    rule("/commerce.product.v1.CatalogService/LikeProduct",           USER_FACING),
    rule("/commerce.product.v1.CatalogService/UnlikeProduct",         USER_FACING),
];

#[rustfmt::skip]
pub const POINT: &[Rule] = &[
    HEALTH_AND_REFLECTION[0], HEALTH_AND_REFLECTION[1], HEALTH_AND_REFLECTION[2],
    BARRIER_READ, BARRIER_ADMIN,
    rule("/commerce.point.v1.PointService/DeductPoints",              ORCHESTRATOR),
    rule("/commerce.point.v1.PointService/RefundPoints",              ORCHESTRATOR),
    rule("/commerce.point.v1.PointService/Charge",                    USER_FACING),
    rule("/commerce.point.v1.PointService/GetBalance",                USER_FACING),
    rule("/commerce.point.v1.PointService/ListLedger",                USER_FACING),
];

#[rustfmt::skip]
pub const COUPON: &[Rule] = &[
    HEALTH_AND_REFLECTION[0], HEALTH_AND_REFLECTION[1], HEALTH_AND_REFLECTION[2],
    BARRIER_READ, BARRIER_ADMIN,
    rule("/commerce.coupon.v1.CouponAdminService/",                   OPERATOR),
    rule("/commerce.coupon.v1.CouponService/QuoteDiscount",           ORCHESTRATOR),
    rule("/commerce.coupon.v1.CouponService/UseCoupon",               ORCHESTRATOR),
    rule("/commerce.coupon.v1.CouponService/RestoreCoupon",           ORCHESTRATOR),
    rule("/commerce.coupon.v1.CouponService/IssueCoupon",             USER_FACING),
    rule("/commerce.coupon.v1.CouponService/ListUserCoupons",         USER_FACING),
];

#[rustfmt::skip]
pub const ORDER: &[Rule] = &[
    HEALTH_AND_REFLECTION[0], HEALTH_AND_REFLECTION[1], HEALTH_AND_REFLECTION[2],
    rule("/commerce.order.v1.SagaAdminService/",                      OPERATOR),
    rule("/commerce.order.v1.OrderService/PlaceOrder",                USER_FACING),
    rule("/commerce.order.v1.OrderService/GetOrder",                  USER_FACING),
    rule("/commerce.order.v1.OrderService/ListOrders",                USER_FACING),
    rule("/commerce.order.v1.OrderService/CancelOrder",               USER_FACING),
    rule("/commerce.order.v1.OrderService/MarkShipped",               SHIPPING),
    rule("/commerce.order.v1.OrderService/MarkDelivered",             SHIPPING),
];

/// The table of a server, by its `ServiceSpec::name`.
pub fn for_server(name: &str) -> Option<&'static [Rule]> {
    match name {
        "product" => Some(PRODUCT),
        "point" => Some(POINT),
        "coupon" => Some(COUPON),
        "orchestrator" => Some(ORDER),
        _ => None,
    }
}

/// The gRPC services each server serves (besides health and reflection),
/// for the coverage check; `Application::run_until_stopped` checks the same
/// against the services a server really registered.
#[cfg(test)]
const SERVED: &[(&str, &[&str])] = &[
    (
        "product",
        &[
            "commerce.product.v1.CatalogService",
            "commerce.product.v1.ProductAdminService",
            "commerce.product.v1.StockService",
            "commerce.saga.v1.SagaBarrierService",
        ],
    ),
    (
        "point",
        &[
            "commerce.point.v1.PointService",
            "commerce.saga.v1.SagaBarrierService",
        ],
    ),
    (
        "coupon",
        &[
            "commerce.coupon.v1.CouponService",
            "commerce.coupon.v1.CouponAdminService",
            "commerce.saga.v1.SagaBarrierService",
        ],
    ),
    (
        "orchestrator",
        &[
            "commerce.order.v1.OrderService",
            "commerce.order.v1.SagaAdminService",
        ],
    ),
];

/// Methods of `service` (`commerce.point.v1.PointService`) that `policy`
/// has no rule for.
pub fn unguarded_methods(policy: &[Rule], service: &str) -> Vec<&'static str> {
    let prefix = format!("/{service}/");
    commerce_proto::codec::METHODS
        .iter()
        .map(|method| method.path)
        .filter(|path| path.starts_with(&prefix))
        .filter(|path| super::authorize::rule_for(policy, path).is_none())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_method_has_a_rule() {
        let mut unguarded = Vec::new();
        for (server, services) in SERVED {
            let policy = for_server(server).unwrap();
            for service in services.iter().copied().chain(["grpc.health.v1.Health"]) {
                for method in unguarded_methods(policy, service) {
                    unguarded.push(format!("{server}: {method}"));
                }
            }
        }
        assert!(unguarded.is_empty(), "methods with no rule: {unguarded:#?}");
    }

    #[test]
    fn every_method_of_the_contracts_is_served_by_some_server() {
        let served: Vec<String> = SERVED
            .iter()
            .flat_map(|(_, services)| services.iter())
            .chain(&["grpc.health.v1.Health"])
            .map(|service| format!("/{service}/"))
            .collect();
        let orphans: Vec<_> = commerce_proto::codec::METHODS
            .iter()
            .filter(|method| !served.iter().any(|s| method.path.starts_with(s)))
            .map(|method| method.path)
            .collect();
        assert!(
            orphans.is_empty(),
            "add their service to SERVED and a rule to its server's table: {orphans:#?}"
        );
    }

    #[test]
    fn every_rule_names_a_method_or_service_that_exists() {
        let stale: Vec<_> = [PRODUCT, POINT, COUPON, ORDER]
            .iter()
            .flat_map(|policy| policy.iter())
            .filter(|rule| !rule.method.starts_with("/grpc.reflection."))
            .filter(|rule| {
                !commerce_proto::codec::METHODS
                    .iter()
                    .any(|method| method.path.starts_with(rule.method))
            })
            .map(|rule| rule.method)
            .collect();
        assert!(stale.is_empty(), "rules for nothing: {stale:#?}");
    }

    #[test]
    fn saga_steps_are_the_orchestrators_alone() {
        use crate::tls::{Identity, is_allowed};
        let steps = [
            (POINT, "/commerce.point.v1.PointService/RefundPoints"),
            (
                PRODUCT,
                "/commerce.product.v1.StockService/ReleaseReservation",
            ),
            (COUPON, "/commerce.coupon.v1.CouponService/UseCoupon"),
        ];
        for (policy, method) in steps {
            for caller in ["bff", "operator", "fulfilment", "point"] {
                let caller = Identity::parse(caller).unwrap();
                assert!(
                    !is_allowed(policy, Some(&caller), method),
                    "{caller} {method}"
                );
            }
            let orchestrator = Identity::parse("orchestrator").unwrap();
            assert!(is_allowed(policy, Some(&orchestrator), method));
        }
    }
}
