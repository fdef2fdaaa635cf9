//! Power: a machine runs or is stopped as the fleet says.

use super::{HostPlan, Phase, is_up};
use crate::fleet::{Machine, Power};
use crate::plan::model::{Action, Disruption};
use crate::resources::observed::ObservedDomain;

/// Start or stop `m` (observed as `observed`, `None` when it is about to
/// be defined). Stopping a guest interrupts its work: restart-class.
pub(super) fn plan(
    m: &Machine,
    observed: Option<&ObservedDomain>,
    addr: &str,
    hp: &mut HostPlan<'_>,
) {
    let running = observed.is_some_and(is_up);
    let (action, disruption, reason) = match (m.power, running) {
        (Power::Running, false) => (Action::Start, Disruption::None, "power = Running"),
        (Power::Stopped, true) => (Action::Stop, Disruption::Restart, "power = Stopped"),
        _ => return,
    };
    hp.add(
        Phase::Power,
        addr.into(),
        Some(m.name.as_str()),
        action,
        disruption,
        reason.into(),
    );
}
