//! One libvirt connection per host, through the `virt` crate.
//!
//! Every call is blocking FFI: callers run a host's calls on that host's own
//! thread (observation and apply fan out one thread per host). libvirt's
//! default error printer is silenced once; errors come back as values.
//!
//! On a `qemu+libssh://` connection calls are made one at a time (a lock
//! per connection; steps still run side by side, they only queue for each
//! call). libvirt 9's libssh transport loses a reply when two calls are in
//! flight on one connection, and the caller then waits for ever: four
//! threads sharing one connection to a real remote libvirtd hung within
//! seconds, every run; one call at a time made 13.6k calls in 60 s without
//! a hang, as did `qemu+ssh://` (OpenSSH) and `qemu+libssh2://` with four
//! threads side by side, which are therefore left concurrent.
//!
//! No keepalive and no libvirt event loop, on purpose: with the default
//! event loop running on a thread of its own (which keepalive needs), two
//! steps running side by side over `qemu+libssh://` crashed the process
//! inside libvirt (SIGSEGV, seen in a CI-like run), and the loop's thread
//! crashed at exit while releasing a libssh connection. A host that stops
//! answering during observation is bounded by `--observe-timeout` instead
//! (see `observe`).

use super::stats;
use crate::resources::domain::DomainSpec;
use crate::resources::observed::{Live, ObservedDomain, PowerState};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

/// A libvirt failure, with the URI and operation it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{uri}: {action}: {message}")]
pub struct LibvirtError {
    /// The connection's URI.
    pub uri: String,
    /// What was being done (`cannot connect`, `domain web: define`).
    pub action: String,
    /// libvirt's message.
    pub message: String,
    /// The connection itself failed (no call was made on the host).
    pub connecting: bool,
}

impl LibvirtError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<&'static str> {
        self.connecting.then_some(
            "is libvirtd running on the host, and is the URI right? Locally, `scripts/libvirtd-start` starts one; over SSH, check that `ssh user@host` works without a prompt (key, known_hosts)",
        )
    }
}

/// An open connection.
pub struct Libvirt {
    uri: String,
    conn: Connect,
    /// Held for every call on a transport that cannot have two in flight.
    one_call: Option<Mutex<()>>,
}

/// Whether calls on `uri` must go one at a time: libvirt's libssh transport
/// (see the module documentation).
fn one_call_at_a_time(uri: &str) -> bool {
    uri.split_once("://")
        .is_some_and(|(scheme, _)| scheme.rsplit('+').next() == Some("libssh"))
}

fn quiet() {
    static ONCE: Once = Once::new();
    ONCE.call_once(virt::error::clear_error_callback);
}

impl Libvirt {
    /// Connects to `uri`.
    pub fn open(uri: &str) -> Result<Libvirt, LibvirtError> {
        tracing::debug!(uri, "libvirt: connect");
        quiet();
        let conn = Connect::open(Some(uri)).map_err(|e| LibvirtError {
            uri: uri.into(),
            action: "cannot connect".into(),
            message: e.message().to_owned(),
            connecting: true,
        })?;
        Ok(Libvirt {
            uri: uri.into(),
            conn,
            one_call: one_call_at_a_time(uri).then(|| Mutex::new(())),
        })
    }

    /// Waits for this connection's turn when its transport needs calls one
    /// at a time; the turn lasts as long as the guard. Never held across a
    /// sleep. A panic elsewhere while holding it leaves nothing to repair.
    fn turn(&self) -> Option<MutexGuard<'_, ()>> {
        self.one_call
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn err(
        &self,
        action: impl Into<String>,
    ) -> impl FnOnce(virt::error::Error) -> LibvirtError + '_ {
        let action = action.into();
        move |e| LibvirtError {
            uri: self.uri.clone(),
            action,
            message: e.message().to_owned(),
            connecting: false,
        }
    }

    fn lookup(&self, name: &str) -> Result<Domain, LibvirtError> {
        self.conn
            .lookup_domain_by_name(name)
            .map_err(self.err(format!("domain {name}: lookup")))
    }

    /// Every libvirt network on the host: name → active.
    pub fn networks(&self) -> Result<std::collections::BTreeMap<String, bool>, LibvirtError> {
        let _turn = self.turn();
        let mut out = std::collections::BTreeMap::new();
        for net in self
            .conn
            .list_all_networks(0)
            .map_err(self.err("list networks"))?
        {
            let name = net.name().map_err(self.err("network name"))?;
            let active = net
                .is_active()
                .map_err(self.err(format!("network {name}: state")))?;
            out.insert(name, active);
        }
        Ok(out)
    }

    /// Every domain on the host, each read in full, sorted by name.
    pub fn domains(&self) -> Result<Vec<ObservedDomain>, LibvirtError> {
        self.domains_where(|_, _| true, true)
    }

    /// Every domain on the host, sorted by name, in a fixed number of
    /// libvirt calls plus one XML read per domain of interest.
    ///
    /// `interesting(name, uuid)` says which domains may be this fleet's
    /// (decided from the name and UUID libvirt returns with the listing, no
    /// call per domain): only those have their definition read (where the
    /// `<vf:owner>` marker decides ownership, as before) and their devices
    /// looked at when they run (disk sizes, live vCPUs and memory in one
    /// bulk statistics call for all of them; guest addresses only when
    /// `addresses`, at three calls per running domain). Every other domain
    /// is known by name, UUID, run state and autostart only: its `config`
    /// is [`DomainSpec::foreign`], with no owner.
    pub fn domains_where(
        &self,
        interesting: impl Fn(&str, &str) -> bool,
        addresses: bool,
    ) -> Result<Vec<ObservedDomain>, LibvirtError> {
        let _turn = self.turn();
        let all = self
            .conn
            .list_all_domains(0)
            .map_err(self.err("list domains"))?;
        // Name and UUID are cached in the handle: no call per domain.
        let mut listed = Vec::with_capacity(all.len());
        for dom in all {
            let name = dom.name().map_err(self.err("domain name"))?;
            let uuid = dom.uuid_string().map_err(self.err("domain UUID"))?;
            listed.push((name, uuid, dom));
        }
        let autostart: BTreeSet<String> = self
            .conn
            .list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_AUTOSTART)
            .map_err(self.err("list autostart domains"))?
            .iter()
            .filter_map(|d| d.uuid_string().ok())
            .collect();
        let states = stats::all(&self.conn, sys::VIR_DOMAIN_STATS_STATE)
            .map_err(self.err("domain states"))?;
        // Devices are asked about only where QEMU answers from memory: the
        // running (or paused) domains of interest. A stopped domain's disk
        // sizes come from the storage backend, which reads them anyway.
        let chosen: Vec<&Domain> = listed
            .iter()
            .filter(|(n, u, _)| interesting(n, u))
            .filter(|(_, u, _)| {
                states
                    .get(u)
                    .map(power_state)
                    .is_some_and(|p| matches!(p, PowerState::Running | PowerState::Paused))
            })
            .map(|(_, _, d)| d)
            .collect();
        let groups = sys::VIR_DOMAIN_STATS_BALLOON
            | sys::VIR_DOMAIN_STATS_VCPU
            | sys::VIR_DOMAIN_STATS_BLOCK;
        let details = match stats::of(&chosen, groups) {
            Ok(d) => d,
            // A domain undefined since the listing may fail the whole call:
            // then ask one by one, and a domain that is gone has none.
            Err(_) => chosen
                .iter()
                .filter_map(|d| stats::of(&[*d], groups).ok())
                .flatten()
                .collect(),
        };
        let mut out = Vec::with_capacity(listed.len());
        for (name, uuid, dom) in &listed {
            let Some(state) = states.get(uuid).map(power_state) else {
                // Undefined by someone else between the listing and now: it
                // is simply not there any more.
                continue;
            };
            let autostart = autostart.contains(uuid);
            if !interesting(name, uuid) {
                out.push(ObservedDomain {
                    config: DomainSpec::foreign(name, uuid),
                    state,
                    autostart,
                    live: None,
                    disk_sizes: BTreeMap::new(),
                    addresses: Vec::new(),
                });
                continue;
            }
            let empty = stats::Record::new();
            let detail = details.get(uuid).unwrap_or(&empty);
            match self.observe_domain(dom, name, state, autostart, detail, addresses) {
                Ok(d) => out.push(d),
                Err(_) if self.conn.lookup_domain_by_uuid_string(uuid).is_err() => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        Ok(out)
    }

    fn observe_domain(
        &self,
        dom: &Domain,
        name: &str,
        state: PowerState,
        autostart: bool,
        detail: &stats::Record,
        addresses: bool,
    ) -> Result<ObservedDomain, LibvirtError> {
        let what = |op: &str| format!("domain {name}: {op}");
        let xml = dom
            .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
            .map_err(self.err(what("read XML")))?;
        let config = DomainSpec::from_xml(&xml).map_err(|m| LibvirtError {
            uri: self.uri.clone(),
            action: what("parse XML"),
            message: m,
            connecting: false,
        })?;
        let number = |k: &str| detail.get(k).and_then(stats::Value::number);
        let live = if state == PowerState::Running || state == PowerState::Paused {
            // `<vcpu>` of the live definition is the maximum, as
            // `vcpu.maximum` is; the balloon's current size is the live
            // `<currentMemory>`.
            match (
                number("vcpu.maximum").or_else(|| number("vcpu.current")),
                number("balloon.current"),
            ) {
                (Some(vcpus), Some(kib)) => Some(Live {
                    vcpus: u32::try_from(vcpus).unwrap_or(u32::MAX),
                    memory_mib: kib / 1024,
                }),
                // Statistics without them (an older libvirt): the live XML.
                _ => {
                    let live_xml = dom.xml_desc(0).map_err(self.err(what("read live XML")))?;
                    DomainSpec::from_xml(&live_xml).ok().map(|s| Live {
                        vcpus: s.vcpus,
                        memory_mib: s.current_memory_mib,
                    })
                }
            }
        } else {
            None
        };
        // Block statistics (running domains only) name each disk by
        // target; a disk without them shows as 0, which is observation, not
        // failure: the storage backend reads the size itself.
        let mut by_target = BTreeMap::new();
        for i in 0..number("block.count").unwrap_or(0) {
            if let Some(t) = detail
                .get(&format!("block.{i}.name"))
                .and_then(stats::Value::text)
            {
                by_target.insert(
                    t.to_owned(),
                    number(&format!("block.{i}.capacity")).unwrap_or(0),
                );
            }
        }
        let disk_sizes = config
            .disks
            .iter()
            .map(|d| {
                (
                    d.target.clone(),
                    by_target.get(&d.target).copied().unwrap_or(0),
                )
            })
            .collect();
        let addresses = if addresses && state == PowerState::Running {
            self.addresses(dom)
        } else {
            Vec::new()
        };
        Ok(ObservedDomain {
            config,
            state,
            autostart,
            live,
            disk_sizes,
            addresses,
        })
    }

    /// The guest's addresses: DHCP leases of libvirt networks first, then
    /// the guest agent, then the host's ARP table. Every source is asked;
    /// one that fails (no agent, ARP's `wrong nlmsg len` on some kernels)
    /// only contributes nothing. Loopback and link-local addresses, which
    /// only the agent reports, are left out: nobody can reach them.
    fn addresses(&self, dom: &Domain) -> Vec<String> {
        let mut addrs: Vec<String> = Vec::new();
        for source in [
            sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
            sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
            sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
        ] {
            let Ok(ifaces) = dom.interface_addresses(source, 0) else {
                continue;
            };
            for a in ifaces.into_iter().flat_map(|i| i.addrs) {
                let reachable = a.addr.parse::<std::net::IpAddr>().is_ok_and(|ip| match ip {
                    std::net::IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
                    std::net::IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local(),
                });
                if reachable && !addrs.contains(&a.addr) {
                    addrs.push(a.addr);
                }
            }
        }
        addrs
    }

    /// The addresses of running domain `name` (see `addresses`); none when
    /// it is not running.
    pub fn addresses_of(&self, name: &str) -> Result<Vec<String>, LibvirtError> {
        let _turn = self.turn();
        let dom = self.lookup(name)?;
        let running = dom
            .is_active()
            .map_err(self.err(format!("domain {name}: state")))?;
        Ok(if running {
            self.addresses(&dom)
        } else {
            Vec::new()
        })
    }

    /// Defines (or redefines) a domain from XML.
    pub fn define(&self, xml: &str) -> Result<(), LibvirtError> {
        let _turn = self.turn();
        tracing::debug!(uri = %self.uri, bytes = xml.len(), "libvirt: define domain");
        self.conn
            .define_domain_xml(xml)
            .map(|_| ())
            .map_err(self.err("define domain"))
    }

    /// Starts a defined domain; already running is fine.
    pub fn start(&self, name: &str) -> Result<(), LibvirtError> {
        let _turn = self.turn();
        tracing::debug!(uri = %self.uri, domain = name, "libvirt: start");
        let dom = self.lookup(name)?;
        if dom
            .is_active()
            .map_err(self.err(format!("domain {name}: state")))?
        {
            return Ok(());
        }
        dom.create()
            .map_err(self.err(format!("domain {name}: start")))
    }

    /// Stops a domain: ACPI shutdown, then power off after `grace`.
    /// Returns true when the guest shut down by itself.
    pub fn stop(&self, name: &str, grace: Duration) -> Result<bool, LibvirtError> {
        tracing::debug!(uri = %self.uri, domain = name, ?grace, "libvirt: stop");
        if self.shutdown_wait(name, grace)? {
            return Ok(true);
        }
        let _turn = self.turn();
        let dom = self.lookup(name)?;
        match dom.destroy() {
            Ok(()) => Ok(false),
            Err(_) if !dom.is_active().unwrap_or(true) => Ok(false),
            Err(e) => Err(self.err(format!("domain {name}: power off"))(e)),
        }
    }

    /// Asks the guest to shut down and waits up to `grace`; never forces.
    /// Returns whether it is stopped.
    pub fn shutdown_wait(&self, name: &str, grace: Duration) -> Result<bool, LibvirtError> {
        let stopped = |dom: &Domain| {
            let _turn = self.turn();
            dom.is_active()
                .map(|on| !on)
                .map_err(self.err(format!("domain {name}: state")))
        };
        let dom = {
            let _turn = self.turn();
            self.lookup(name)?
        };
        if stopped(&dom)? {
            return Ok(true);
        }
        {
            let _turn = self.turn();
            let _ = dom.shutdown();
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if stopped(&dom)? {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(false)
    }

    /// Whose domain `name` is, read from its definition now: `None` when
    /// it does not exist, `Some(None)` when it carries no virtfleet marker.
    pub fn owner_fleet(&self, name: &str) -> Result<Option<Option<String>>, LibvirtError> {
        let _turn = self.turn();
        let Ok(dom) = self.conn.lookup_domain_by_name(name) else {
            return Ok(None);
        };
        let what = format!("domain {name}: read XML");
        let xml = dom
            .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
            .map_err(self.err(what.clone()))?;
        let spec = DomainSpec::from_xml(&xml).map_err(|m| LibvirtError {
            uri: self.uri.clone(),
            action: what,
            message: m,
            connecting: false,
        })?;
        Ok(Some(spec.owner.map(|o| o.fleet)))
    }

    /// Removes a stopped domain's definition (its disks are not touched).
    pub fn undefine(&self, name: &str) -> Result<(), LibvirtError> {
        let _turn = self.turn();
        tracing::debug!(uri = %self.uri, domain = name, "libvirt: undefine");
        let dom = match self.conn.lookup_domain_by_name(name) {
            Ok(d) => d,
            Err(_) => return Ok(()),
        };
        let flags = sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | sys::VIR_DOMAIN_UNDEFINE_NVRAM;
        dom.undefine_flags(flags)
            .or_else(|_| dom.undefine())
            .map_err(self.err(format!("domain {name}: undefine")))
    }

    /// Sets a running guest's memory (balloon target) without a restart.
    pub fn set_memory_live(&self, name: &str, mib: u64) -> Result<(), LibvirtError> {
        let _turn = self.turn();
        let dom = self.lookup(name)?;
        dom.set_memory_flags(mib * 1024, sys::VIR_DOMAIN_AFFECT_LIVE)
            .map_err(self.err(format!("domain {name}: set memory")))
    }

    /// Sets whether the domain starts with the host.
    pub fn set_autostart(&self, name: &str, on: bool) -> Result<(), LibvirtError> {
        let _turn = self.turn();
        let dom = self.lookup(name)?;
        dom.set_autostart(on)
            .map_err(self.err(format!("domain {name}: set autostart")))
    }

    /// Grows a running guest's disk so the guest sees the new size at once.
    pub fn block_resize(&self, name: &str, target: &str, bytes: u64) -> Result<(), LibvirtError> {
        let _turn = self.turn();
        tracing::debug!(uri = %self.uri, domain = name, target, bytes, "libvirt: block resize");
        let dom = self.lookup(name)?;
        dom.block_resize(target, bytes, sys::VIR_DOMAIN_BLOCK_RESIZE_BYTES)
            .map_err(self.err(format!("domain {name}: resize {target}")))
    }

    /// Takes an internal snapshot `name` of every disk of a domain (with the
    /// guest's memory when it runs: QEMU requires that for internal
    /// checkpoints). Exists already is fine.
    pub fn snapshot(&self, name: &str, snapshot: &str) -> Result<(), LibvirtError> {
        let _turn = self.turn();
        tracing::debug!(uri = %self.uri, domain = name, snapshot, "libvirt: snapshot");
        let dom = self.lookup(name)?;
        if Domain::lookup_snapshot_by_name(&dom, snapshot, 0).is_ok() {
            return Ok(());
        }
        let xml = format!(
            "<domainsnapshot><name>{snapshot}</name><description>virtfleet</description></domainsnapshot>"
        );
        dom.create_snapshot_xml(&xml, 0)
            .map(|_| ())
            .map_err(self.err(format!("domain {name}: snapshot {snapshot}")))
    }

    /// The disk paths the running (or defined) domain uses now, from its
    /// live definition.
    pub fn disk_paths(&self, name: &str) -> Result<Vec<String>, LibvirtError> {
        let _turn = self.turn();
        let dom = self.lookup(name)?;
        let what = format!("domain {name}: read live XML");
        let xml = dom.xml_desc(0).map_err(self.err(what.clone()))?;
        let spec = DomainSpec::from_xml(&xml).map_err(|message| LibvirtError {
            uri: self.uri.clone(),
            action: what,
            message,
            connecting: false,
        })?;
        Ok(spec.disks.into_iter().map(|d| d.path).collect())
    }

    /// Deletes snapshot `snapshot` of a domain; returns false when libvirt
    /// does not know it (taken outside libvirt, e.g. before the domain existed).
    pub fn delete_snapshot(&self, name: &str, snapshot: &str) -> Result<bool, LibvirtError> {
        let _turn = self.turn();
        let dom = self.lookup(name)?;
        match Domain::lookup_snapshot_by_name(&dom, snapshot, 0) {
            Ok(s) => s
                .delete(0)
                .map(|()| true)
                .map_err(self.err(format!("domain {name}: delete snapshot {snapshot}"))),
            Err(_) => Ok(false),
        }
    }

    /// True when a domain of that name is defined.
    pub fn exists(&self, name: &str) -> bool {
        let _turn = self.turn();
        self.conn.lookup_domain_by_name(name).is_ok()
    }

    /// True when the domain is running.
    pub fn is_running(&self, name: &str) -> Result<bool, LibvirtError> {
        let _turn = self.turn();
        match self.conn.lookup_domain_by_name(name) {
            Ok(d) => d
                .is_active()
                .map_err(self.err(format!("domain {name}: state"))),
            Err(_) => Ok(false),
        }
    }
}

/// The run state in a `state.state` statistic (libvirt's `virDomainState`).
fn power_state(record: &stats::Record) -> PowerState {
    match record.get("state.state").and_then(stats::Value::number) {
        // running, blocked
        Some(1 | 2) => PowerState::Running,
        // paused, pmsuspended
        Some(3 | 7) => PowerState::Paused,
        // shutoff, crashed
        Some(5 | 6) => PowerState::Stopped,
        _ => PowerState::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::one_call_at_a_time;

    #[test]
    fn only_the_libssh_transport_takes_calls_one_at_a_time() {
        assert!(one_call_at_a_time(
            "qemu+libssh://root@hv1:22/system?known_hosts_verify=normal"
        ));
        for uri in [
            "qemu:///system",
            "qemu+ssh://root@hv1/system",
            "qemu+libssh2://root@hv1/system",
            "qemu+unix:///system?socket=/run/x",
            "qemu+tls://hv1/system",
            "libssh",
        ] {
            assert!(!one_call_at_a_time(uri), "{uri}");
        }
    }
}
