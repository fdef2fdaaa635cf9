//! Base images: each image a machine on this host is cloned from must be on
//! the host, verified, before any disk is made from it.

use super::{HostPlan, Phase};
use crate::fleet::Machine;
use crate::lock::ImageLock;
use crate::plan::model::{Action, Disruption};
use crate::resources::observed::HostState;
use std::collections::BTreeSet;

/// Plans one `EnsureImage` per image the host lacks, and refuses machines
/// whose image is not pinned (nothing can be built for them).
pub(super) fn plan(
    lock: &ImageLock,
    state: &HostState,
    desired: &[&Machine],
    hp: &mut HostPlan<'_>,
) {
    let h = hp.name();
    let mut planned = BTreeSet::new();
    for m in desired {
        let Some(pin) = lock.images.get(&m.image) else {
            hp.refuse(
                format!("{h}/{}", m.name),
                format!(
                    "image {:?} is not pinned in images.lock; run `virtfleet images lock`",
                    m.image.as_str()
                ),
            );
            continue;
        };
        let sha = pin.sha256.to_string();
        if state.images.contains(&sha) || !planned.insert(sha.clone()) {
            continue;
        }
        let reason = if state.changed_images.contains(&sha) {
            format!(
                "drift: base image {} changed on the host since it was verified; it is copied again",
                m.image
            )
        } else {
            format!("base image {} is not on the host yet", m.image)
        };
        hp.add(
            Phase::Image,
            format!("{h}/images/{}", pin.sha256.short()),
            None,
            Action::EnsureImage {
                image: m.image.to_string(),
                sha256: pin.sha256.to_string(),
                format: pin.format,
                size: pin.size,
            },
            Disruption::None,
            reason,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use crate::plan::model::Action;
    use crate::resources::observed::HostState;

    #[test]
    fn one_copy_per_missing_image_and_refusal_without_a_pin() {
        // (image already on the host, machines, lock has the pin) →
        // (EnsureImage changes, refusals)
        let table = [
            (false, &["name = \"a\"", "name = \"b\""][..], true, 1, 0),
            (true, &["name = \"a\""][..], true, 0, 0),
            (false, &[][..], true, 0, 0),
            (false, &["name = \"a\"", "name = \"b\""][..], false, 0, 2),
        ];
        for (present, machines, pinned, copies, refusals) in table {
            let f = fleet(machines);
            let mut state = HostState::default();
            if present {
                state.images.insert(SHA.into());
            }
            let lock = if pinned {
                lock()
            } else {
                crate::lock::ImageLock::default()
            };
            let desired: Vec<_> = f.machines.values().collect();
            let mut hp = host_plan(&f);
            super::plan(&lock, &state, &desired, &mut hp);
            let (changes, _, refused) = parts(hp);
            let ensures = changes
                .iter()
                .filter(|(_, c)| matches!(c.action, Action::EnsureImage { .. }))
                .count();
            assert_eq!(
                (ensures, refused.len()),
                (copies, refusals),
                "{present} {machines:?} {pinned}"
            );
        }
    }
}
