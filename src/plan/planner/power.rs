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

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use crate::plan::model::{Action, Disruption};
    use crate::resources::observed::PowerState;

    #[test]
    fn power_follows_the_fleet_and_stopping_is_restart_class() {
        // (declared power, observed state; None = not defined yet) → planned
        let table = [
            ("Running", None, Some((Action::Start, Disruption::None))),
            ("Stopped", None, None),
            (
                "Running",
                Some(PowerState::Stopped),
                Some((Action::Start, Disruption::None)),
            ),
            ("Running", Some(PowerState::Running), None),
            ("Running", Some(PowerState::Paused), None),
            (
                "Stopped",
                Some(PowerState::Running),
                Some((Action::Stop, Disruption::Restart)),
            ),
            (
                "Stopped",
                Some(PowerState::Paused),
                Some((Action::Stop, Disruption::Restart)),
            ),
            ("Stopped", Some(PowerState::Stopped), None),
        ];
        for (power, observed, want) in table {
            let f = fleet(&[&format!("name = \"a\", power = V.Power.{power}")]);
            let mut d = converged(&f).domains.remove("a").unwrap();
            let mut hp = host_plan(&f);
            let observed = observed.map(|s| {
                d.state = s;
                &d
            });
            super::plan(machine(&f, "a"), observed, "hv1/a", &mut hp);
            let (changes, _, _) = parts(hp);
            let got = changes
                .into_iter()
                .map(|(_, c)| (c.action, c.disruption))
                .next();
            assert_eq!(got, want, "{power} {observed:?}");
        }
    }
}
