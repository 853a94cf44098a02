//! Reconciliation of the participants with the sagas dtm finished. dtm's
//! orders go to a shop of their own (seeded like the saga's, same sizes,
//! prices and coupons), so the participants' books for that shop must
//! match dtm's orders alone, by the rules every system is held to
//! (`crate::reconcile`): stock sold = the units of the orders dtm
//! confirmed, nothing left reserved; each user's balance and ledger = the
//! confirmed orders' payable, each rejected saga's ledger netting to zero
//! (its refund ran); a coupon used, by its saga, iff its order was
//! confirmed. A lost compensation or an action run twice fails the run.

use super::client::{Ending, Placed};
use crate::mesh::Systems;
use crate::model::Shop;
use crate::reconcile::{self, SettledOrder, State};

/// dtm's orders as the reconciliation reads an order.
fn settled(p: &Placed) -> SettledOrder {
    let (state, discount, points_paid) = match p.ending {
        Ending::Confirmed => (State::Confirmed, p.discount, p.payable),
        Ending::Rejected | Ending::RefusedBeforeSubmit => (State::Rejected, 0, 0),
        Ending::Unfinished => (State::Pending, 0, 0),
    };
    SettledOrder {
        order_id: p.gid.clone(),
        user_id: p.spec.user_id.clone(),
        state,
        lines: p.spec.lines.clone(),
        user_coupon_id: p.spec.user_coupon_id,
        subtotal: p.subtotal,
        discount,
        points_paid,
        // The saga id the participants' ledger and coupons name.
        reference: p.gid.clone(),
    }
}

/// The participants' books for `shop` set against every order dtm placed
/// there; checks named "dtm: ...".
pub async fn reconcile(
    systems: &Systems,
    shop: &Shop,
    placed: &[Placed],
) -> anyhow::Result<Vec<(String, bool)>> {
    let mut books = reconcile::mesh_books(systems, shop).await?;
    // The orchestrator recorded no order for this shop; dtm's are these.
    books.orders = placed.iter().map(settled).collect();
    let checks = reconcile::check("dtm", shop, &books, Some(placed.len())).checks;
    Ok(checks
        .into_iter()
        .map(|(check, held)| (format!("dtm: {check}"), held))
        .collect())
}
