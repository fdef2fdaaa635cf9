//! Semantic checks: raw Dhall values → a validated [`Fleet`].
//!
//! Dhall's type checker already guarantees the shape. What it cannot know
//! is checked here: names, uniqueness, references, sizes, capacity, and
//! volume-name collisions. Every check runs and every problem is reported
//! together, each naming the file, the line when a literal can be found,
//! and the host/image/machine/field at fault.

use super::endpoints::{
    Reach, SUPPORTED_URIS, check_dataset, check_dir_path, check_ssh_target, check_uri,
};
use super::model::{DataDisk, Fleet, Host, Image, Machine, Placement};
use super::names::{DiskName, FleetName, HostName, ImageName, VmName, check_name};
use super::raw;
use crate::diag::{Diagnostic, SourceIndex, clip};
use std::collections::{BTreeMap, BTreeSet};

/// Upper bound on vCPUs per machine (libvirt's QEMU driver accepts more, but
/// a larger number in a homelab fleet is a typo).
pub const MAX_CPUS: u64 = 256;
/// Smallest memory a Linux guest boots with, in MiB.
pub const MIN_MEMORY_MIB: u64 = 64;
/// 4 TiB in MiB.
pub const MAX_MEMORY_MIB: u64 = 4 * 1024 * 1024;
/// 64 TiB in GiB.
pub const MAX_DISK_GIB: u64 = 64 * 1024;
/// Largest retention count accepted per period (hourly, daily, weekly, monthly).
pub const MAX_SNAPSHOTS: [(&str, u64); 4] = [
    ("hourly", 720),
    ("daily", 366),
    ("weekly", 260),
    ("monthly", 240),
];
/// Longest trash retention accepted, in days.
pub const MAX_TRASH_DAYS: u64 = 3650;

struct Checker<'a> {
    src: &'a SourceIndex,
    errors: Vec<Diagnostic>,
    /// (kind, raw name) of declarations refused for their name: references
    /// to them are not reported again as unknown (the cause is reported).
    rejected: BTreeSet<(&'static str, String)>,
}

impl Checker<'_> {
    fn err(&mut self, line: Option<usize>, subject: String, message: String) {
        self.errors.push(self.src.at(line, subject, message));
    }

    /// Reports `name` if invalid; returns the newtype when valid.
    fn name<T>(
        &mut self,
        kind: &str,
        raw: &str,
        new: fn(&str) -> Result<T, super::NameError>,
    ) -> Option<T> {
        match new(raw) {
            Ok(n) => Some(n),
            Err(e) => {
                let line = self.src.record(raw);
                let subject = format!("{kind} {}", clip(raw));
                self.err(line, subject, format!("invalid name: {e}"));
                None
            }
        }
    }

    /// Reports `field = value` of the `kind` named `name` if outside `min..=max`.
    fn range(
        &mut self,
        (kind, name): (&str, &str),
        field: &str,
        value: u64,
        (min, max, unit): (u64, u64, &str),
    ) -> bool {
        if value < min || value > max {
            let line = self.src.field(name, field);
            let why = if value < min {
                "too small"
            } else {
                "too large"
            };
            self.err(
                line,
                format!("{kind} {}", clip(name)),
                format!("{field} = {value} is {why} (allowed {min}..{max}{unit})"),
            );
            return false;
        }
        true
    }

    fn snapshots(&mut self, kind: &str, name: &str, s: &raw::Snapshots) {
        let counts = [s.hourly, s.daily, s.weekly, s.monthly];
        for ((period, max), value) in MAX_SNAPSHOTS.iter().zip(counts) {
            self.range((kind, name), period, value, (0, *max, " snapshots"));
        }
    }
}

/// Validates `raw` (evaluated from the file `src` indexes) into a [`Fleet`],
/// or returns every problem found.
pub fn validate(raw: raw::Fleet, src: &SourceIndex) -> Result<Fleet, Vec<Diagnostic>> {
    let mut c = Checker {
        src,
        errors: Vec::new(),
        rejected: BTreeSet::new(),
    };
    let fleet_name = c.name("fleet", &raw.name, FleetName::new);
    c.settings(&raw);
    let hosts = c.hosts(&raw.hosts);
    let images = c.images(&raw.images);
    let machines = c.machines(&raw, &hosts, &images);
    for host in hosts.values() {
        // Capacity of machines the planner places is checked when it places them.
        let fixed: Vec<&Machine> = machines
            .values()
            .filter(|m| m.placement.fixed && m.host == host.name)
            .collect();
        c.capacity(host, &fixed);
        let maybe: Vec<&Machine> = machines
            .values()
            .filter(|m| m.placement.candidates.contains(&host.name))
            .collect();
        c.volume_collisions(host, &maybe);
    }
    match fleet_name {
        Some(name) if c.errors.is_empty() => Ok(Fleet {
            source: src.file().to_owned(),
            index: std::sync::Arc::new(src.clone()),
            name,
            settings: raw.settings,
            hosts,
            images,
            machines,
        }),
        _ => Err(c.errors),
    }
}

impl Checker<'_> {
    fn settings(&mut self, raw: &raw::Fleet) {
        if raw.settings.trash_retention_days > MAX_TRASH_DAYS {
            let line = self.src.field(&raw.name, "trashRetentionDays");
            self.err(
                line,
                "settings".into(),
                format!(
                    "trashRetentionDays = {} is too large (allowed 0..{MAX_TRASH_DAYS})",
                    raw.settings.trash_retention_days
                ),
            );
        }
        let over = raw.settings.cpu_overcommit;
        if !(1..=64).contains(&over) {
            let line = self.src.field(&raw.name, "cpuOvercommit");
            let msg = format!("cpuOvercommit = {over} is out of range (allowed 1..64)");
            self.err(line, "settings".into(), msg);
        }
    }

    /// Hosts with valid, unique names; each one's fields are checked.
    fn hosts(&mut self, raw: &[raw::Host]) -> BTreeMap<HostName, Host> {
        let mut hosts = BTreeMap::new();
        for h in raw {
            let Some(name) = self.declared("host", &h.name, HostName::new, &hosts) else {
                continue;
            };
            self.host_fields(h);
            hosts.insert(
                name.clone(),
                Host {
                    name,
                    uri: h.uri.clone(),
                    storage: h.storage.clone(),
                    domain_type: h.domain_type,
                    cpu_mode: h.cpu_mode.clone(),
                    network: h.network.clone(),
                    capacity: h.capacity,
                    ssh_target: h.ssh_target.clone(),
                    concurrency: h.concurrency.and_then(|n| usize::try_from(n).ok()),
                    labels: {
                        let mut l = h.labels.clone();
                        l.sort();
                        l.dedup();
                        l
                    },
                },
            );
        }
        hosts
    }

    /// The name of a declared host, image or machine when it is valid and
    /// new; otherwise reports why. A name refused for its spelling is
    /// remembered, so references to it do not echo the same problem.
    fn declared<T: Ord, V>(
        &mut self,
        kind: &'static str,
        raw: &str,
        new: fn(&str) -> Result<T, super::NameError>,
        seen: &BTreeMap<T, V>,
    ) -> Option<T> {
        let Some(name) = self.name(kind, raw, new) else {
            self.rejected.insert((kind, raw.to_owned()));
            return None;
        };
        if seen.contains_key(&name) {
            let line = self.src.record_nth(raw, 1).or(self.src.record(raw));
            self.err(
                line,
                format!("{kind} {}", clip(raw)),
                "declared more than once".into(),
            );
            return None;
        }
        Some(name)
    }

    /// URI, sshTarget and storage: where the host is and where its disks live.
    fn host_fields(&mut self, h: &raw::Host) {
        let subject = format!("host {}", clip(&h.name));
        let reach = match check_uri(&h.uri) {
            Ok(reach) => Some(reach),
            Err(why) => {
                let msg = format!(
                    "uri {} {why}; virtfleet supports {SUPPORTED_URIS}",
                    clip(&h.uri)
                );
                self.err(self.src.field(&h.name, "uri"), subject.clone(), msg);
                None
            }
        };
        match &h.ssh_target {
            Some(t) => {
                if let Err(why) = check_ssh_target(t) {
                    let msg = format!("sshTarget {} {why}; expected [user@]host[:port]", clip(t));
                    self.err(self.src.field(&h.name, "sshTarget"), subject.clone(), msg);
                }
            }
            None if reach == Some(Reach::Network) => {
                let msg = format!(
                    "uri {} reaches libvirt over TLS/TCP, but virtfleet manages disks over SSH: set sshTarget = Some \"root@host\"",
                    clip(&h.uri)
                );
                self.err(self.src.field(&h.name, "uri"), subject.clone(), msg);
            }
            None => {}
        }
        let storage = match &h.storage {
            raw::Storage::Zfs { parent } => check_dataset(parent)
                .map_err(|why| format!("storage Zfs parent {} {why}", clip(parent))),
            raw::Storage::Dir { path } => {
                check_dir_path(path).map_err(|why| format!("storage Dir path {} {why}", clip(path)))
            }
        };
        if let Err(msg) = storage {
            self.err(self.src.field(&h.name, "storage"), subject.clone(), msg);
        }
        self.host_settings(h, &subject);
    }

    /// Network, CPU model and capacity of a host.
    fn host_settings(&mut self, h: &raw::Host, subject: &str) {
        if let raw::Network::Libvirt(net) | raw::Network::Bridge(net) = &h.network
            && (net.is_empty()
                || net
                    .chars()
                    .any(|ch| ch.is_whitespace() || ch.is_control() || "/'\"".contains(ch)))
        {
            self.err(
                self.src.field(&h.name, "network"),
                subject.to_owned(),
                format!(
                    "network name {} is not a valid libvirt network or bridge name",
                    clip(net)
                ),
            );
        }
        if let raw::CpuMode::Model(m) = &h.cpu_mode
            && (m.is_empty()
                || !m
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)))
        {
            self.err(
                self.src.field(&h.name, "cpuMode"),
                subject.to_owned(),
                format!("CPU model {} is not a QEMU model name", clip(m)),
            );
        }
        if let Some(n) = h.concurrency {
            let who = ("host", h.name.as_str());
            self.range(who, "concurrency", n, (1, 64, " steps at once"));
        }
        if let Some(cap) = &h.capacity {
            let who = ("host", h.name.as_str());
            self.range(who, "cpus", cap.cpus, (1, 65536, " CPUs of capacity"));
            let mem = (MIN_MEMORY_MIB, 1 << 40, " MiB of capacity");
            self.range(who, "memoryMiB", cap.memory_mib, mem);
        }
    }

    /// Images with valid, unique names and supported URLs.
    fn images(&mut self, raw: &[raw::Image]) -> BTreeMap<ImageName, Image> {
        let mut images = BTreeMap::new();
        for i in raw {
            let Some(name) = self.declared("image", &i.name, ImageName::new, &images) else {
                continue;
            };
            if let Err(why) = check_url(&i.url) {
                let line = self.src.field(&i.name, "url");
                self.err(line, format!("image {}", clip(&i.name)), why);
            }
            images.insert(
                name.clone(),
                Image {
                    name,
                    url: i.url.clone(),
                    format: i.format,
                },
            );
        }
        images
    }

    /// Machines whose every field is valid and whose host and image resolve.
    fn machines(
        &mut self,
        raw: &raw::Fleet,
        hosts: &BTreeMap<HostName, Host>,
        images: &BTreeMap<ImageName, Image>,
    ) -> BTreeMap<VmName, Machine> {
        let mut machines = BTreeMap::new();
        for m in &raw.machines {
            let Some(name) = self.declared("machine", &m.name, VmName::new, &machines) else {
                continue;
            };
            let placement = self.placement(m, raw.hosts.len(), hosts);
            let image = self.image_ref(m, images);
            let mut ok = self.machine_sizes(m);
            let data_disks = self.data_disks(m, &mut ok);
            self.cloud_init(m);
            let (Some(placement), Some(image), true) = (placement, image, ok) else {
                continue;
            };
            let Some(host) = placement.candidates.first().cloned() else {
                continue;
            };
            let network = m
                .network
                .clone()
                .unwrap_or_else(|| hosts[&host].network.clone());
            machines.insert(
                name.clone(),
                Machine {
                    name,
                    host,
                    placement,
                    image,
                    cpus: m.cpus as u32,
                    memory_mib: m.memory_mib,
                    disk_gib: m.disk_gib,
                    data_disks,
                    autostart: m.autostart,
                    power: m.power,
                    network,
                    cloud_init: m.cloud_init.clone(),
                    snapshots: m.snapshots,
                    protect: m.protect,
                },
            );
        }
        machines
    }

    /// Where the machine may run: the host it names, the fleet's only host,
    /// or the allowed hosts carrying the labels it asks for (at least one).
    /// A host whose declaration was already reported is not reported again.
    fn placement(
        &mut self,
        m: &raw::Machine,
        declared: usize,
        hosts: &BTreeMap<HostName, Host>,
    ) -> Option<Placement> {
        let subject = format!("machine {}", clip(&m.name));
        let group = m.group.clone().filter(|g| !g.is_empty());
        let mut labels = m.host_labels.clone();
        labels.sort();
        labels.dedup();
        let resolve = |c: &mut Self, h: &str, field: &str| {
            let found = HostName::new(h).ok().filter(|h| hosts.contains_key(h));
            if found.is_none() && !c.rejected.contains(&("host", h.to_owned())) {
                let known = join_names(hosts.keys());
                let msg = format!("unknown host {} (hosts: {known})", clip(h));
                c.err(c.src.field(&m.name, field), subject.clone(), msg);
            }
            found
        };
        if let Some(h) = &m.host {
            if !m.hosts.is_empty() || !labels.is_empty() {
                let msg = "`host` fixes the machine's host: leave `hosts` and `hostLabels` empty, or set `host = None Text` to let the planner choose".to_owned();
                self.err(self.src.field(&m.name, "host"), subject.clone(), msg);
                return None;
            }
            return resolve(self, h, "host").map(|h| Placement {
                fixed: true,
                candidates: vec![h],
                labels,
                group,
            });
        }
        if declared == 1 && m.hosts.is_empty() && labels.is_empty() {
            // The only declared host may have been refused: its problem is the one to fix.
            return hosts.keys().next().map(|h| Placement {
                fixed: true,
                candidates: vec![h.clone()],
                labels,
                group,
            });
        }
        let allowed: Vec<HostName> = if m.hosts.is_empty() {
            hosts.keys().cloned().collect()
        } else {
            let named: Vec<Option<HostName>> =
                m.hosts.iter().map(|h| resolve(self, h, "hosts")).collect();
            if named.iter().any(Option::is_none) {
                return None;
            }
            named.into_iter().flatten().collect()
        };
        let mut candidates: Vec<HostName> = allowed
            .into_iter()
            .filter(|h| labels.iter().all(|l| hosts[h].labels.contains(l)))
            .collect();
        candidates.sort();
        candidates.dedup();
        if candidates.is_empty() {
            let have: Vec<String> = hosts
                .values()
                .map(|h| format!("{}: [{}]", h.name, h.labels.join(", ")))
                .collect();
            let msg = format!(
                "no allowed host carries every label of hostLabels [{}] (host labels: {})",
                labels.join(", "),
                have.join("; ")
            );
            self.err(self.src.field(&m.name, "hostLabels"), subject, msg);
            return None;
        }
        Some(Placement {
            fixed: false,
            candidates,
            labels,
            group,
        })
    }

    /// The machine's image, when it names a declared one.
    fn image_ref(
        &mut self,
        m: &raw::Machine,
        images: &BTreeMap<ImageName, Image>,
    ) -> Option<ImageName> {
        let found = ImageName::new(&m.image)
            .ok()
            .filter(|i| images.contains_key(i));
        if found.is_none() && !self.rejected.contains(&("image", m.image.clone())) {
            let known = join_names(images.keys());
            self.err(
                self.src.field(&m.name, "image"),
                format!("machine {}", clip(&m.name)),
                format!("unknown image {} (images: {known})", clip(&m.image)),
            );
        }
        found
    }

    /// CPU, memory, root disk and snapshot counts; false if any is out of range.
    fn machine_sizes(&mut self, m: &raw::Machine) -> bool {
        let who = ("machine", m.name.as_str());
        let mut ok = self.range(who, "cpus", m.cpus, (1, MAX_CPUS, ""));
        let mem = (MIN_MEMORY_MIB, MAX_MEMORY_MIB, " MiB");
        ok &= self.range(who, "memoryMiB", m.memory_mib, mem);
        ok &= self.range(who, "diskGiB", m.disk_gib, (1, MAX_DISK_GIB, " GiB"));
        self.snapshots("machine", &m.name, &m.snapshots);
        ok
    }

    /// Validated data disks; clears `ok` if any is invalid.
    fn data_disks(&mut self, m: &raw::Machine, ok: &mut bool) -> Vec<DataDisk> {
        let mut data_disks = Vec::new();
        let mut seen = BTreeSet::new();
        for d in &m.data_disks {
            let dsub = format!("machine {} disk {}", clip(&m.name), clip(&d.name));
            let line = self.src.field(&m.name, "dataDisks");
            let name = match DiskName::new(&d.name) {
                Err(e) => Err(format!("invalid disk name: {e}")),
                Ok(_) if d.name == "root" => {
                    Err("the name `root` is reserved for the root disk".to_owned())
                }
                Ok(_) if !seen.insert(d.name.clone()) => {
                    Err("declared more than once in this machine".to_owned())
                }
                Ok(name) => Ok(name),
            };
            let name = match name {
                Ok(name) => name,
                Err(msg) => {
                    self.err(line, dsub, msg);
                    *ok = false;
                    continue;
                }
            };
            if d.size_gib == 0 || d.size_gib > MAX_DISK_GIB {
                let why = if d.size_gib == 0 {
                    "too small"
                } else {
                    "too large"
                };
                let msg = format!(
                    "sizeGiB = {} is {why} (allowed 1..{MAX_DISK_GIB} GiB)",
                    d.size_gib
                );
                self.err(self.src.field(&m.name, "sizeGiB"), dsub, msg);
                *ok = false;
            }
            if let Some(s) = &d.snapshots {
                self.snapshots("machine", &m.name, s);
            }
            data_disks.push(DataDisk {
                name,
                size_gib: d.size_gib,
                snapshots: d.snapshots.unwrap_or(m.snapshots),
            });
        }
        data_disks
    }

    fn cloud_init(&mut self, m: &raw::Machine) {
        let Some(ci) = &m.cloud_init else {
            return;
        };
        let subject = format!("machine {}", clip(&m.name));
        if let Some(h) = &ci.hostname
            && (h.is_empty() || h.len() > 253 || !h.split('.').all(|l| check_name(l).is_ok()))
        {
            self.err(
                self.src.field(&m.name, "hostname"),
                subject.clone(),
                format!(
                    "cloudInit hostname {} is not a valid lowercase DNS name",
                    clip(h)
                ),
            );
        }
        let user_ok = ci.user.len() <= 32
            && ci
                .user
                .starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && ci
                .user
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !user_ok {
            self.err(
                self.src.field(&m.name, "user"),
                subject.clone(),
                format!(
                    "cloudInit user {} is not a valid login name ([a-z_][a-z0-9_-]*, at most 32 characters)",
                    clip(&ci.user)
                ),
            );
        }
        if let Some(id) = &ci.instance_id
            && (id.is_empty()
                || id.len() > 128
                || id.chars().any(|c| c.is_control() || c == '"' || c == '\\'))
        {
            self.err(
                self.src.field(&m.name, "instanceId"),
                subject.clone(),
                format!("cloudInit instanceId {} must be 1-128 printable characters without quotes or backslashes", clip(id)),
            );
        }
        for key in ci.meta_data.keys() {
            if ["instance-id", "local-hostname", "public-keys"].contains(&key.as_str())
                || key.is_empty()
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                self.err(
                    self.src.field(&m.name, "metaData"),
                    subject.clone(),
                    format!("cloudInit metaData key {} is reserved by virtfleet or not a plain key ([A-Za-z0-9_-]+)", clip(key)),
                );
            }
        }
        for key in &ci.ssh_authorized_keys {
            if key.contains('\n') || key.split_whitespace().count() < 2 {
                self.err(
                    self.src.field(&m.name, "sshAuthorizedKeys"),
                    subject.clone(),
                    format!("ssh key {} is not an OpenSSH public key line", clip(key)),
                );
            }
        }
    }

    /// No machine above the host's CPUs; all of them within its memory.
    fn capacity(&mut self, host: &Host, on_host: &[&Machine]) {
        let Some(cap) = &host.capacity else {
            return;
        };
        for m in on_host {
            if u64::from(m.cpus) > cap.cpus {
                self.err(
                    self.src.field(m.name.as_str(), "cpus"),
                    format!("machine {:?}", m.name.as_str()),
                    format!(
                        "cpus = {} exceeds host {:?}'s capacity of {} CPUs",
                        m.cpus,
                        host.name.as_str(),
                        cap.cpus
                    ),
                );
            }
        }
        let total: u64 = on_host.iter().map(|m| m.memory_mib).sum();
        if total > cap.memory_mib {
            let names = join_names(on_host.iter().map(|m| &m.name));
            self.err(
                self.src.record(host.name.as_str()),
                format!("host {:?}", host.name.as_str()),
                format!(
                    "machines {names} need {total} MiB of memory together, over the capacity of {} MiB",
                    cap.memory_mib
                ),
            );
        }
    }

    /// Two disks on one host must not map to the same volume name.
    fn volume_collisions(&mut self, host: &Host, on_host: &[&Machine]) {
        let mut volumes: BTreeMap<String, (String, String)> = BTreeMap::new();
        for m in on_host {
            for (disk, _) in m.disks() {
                let vol = m.volume_name(&disk);
                if let Some((other_m, other_d)) = volumes.get(&vol) {
                    self.err(
                        self.src.record(m.name.as_str()),
                        format!("machine {:?} disk {disk:?}", m.name.as_str()),
                        format!(
                            "its volume {vol:?} on host {:?} is also claimed by machine {other_m:?} disk {other_d:?}; rename one of them",
                            host.name.as_str()
                        ),
                    );
                } else {
                    volumes.insert(vol, (m.name.to_string(), disk));
                }
            }
        }
    }
}

/// Checks an image source URL: only http(s), no whitespace.
pub fn check_url(url: &str) -> Result<(), String> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    match scheme {
        Some("http" | "https")
            if !url.chars().any(|c| c.is_whitespace() || c.is_control())
                && url.len() > "http://x".len() - 1 =>
        {
            Ok(())
        }
        Some("file") => Err(format!(
            "url {}: file:// sources are not supported; serve the image over http(s) (e.g. `python3 -m http.server`)",
            clip(url)
        )),
        _ => Err(format!(
            "url {} must be an http:// or https:// URL",
            clip(url)
        )),
    }
}

fn join_names<T: std::fmt::Display>(names: impl Iterator<Item = T>) -> String {
    let v: Vec<String> = names.map(|n| n.to_string()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
