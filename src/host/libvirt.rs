//! One libvirt connection per host, through the `virt` crate.
//!
//! Every call is blocking FFI: callers run a host's calls on that host's own
//! thread (observation and apply fan out one thread per host). libvirt's
//! default error printer is silenced once; errors come back as values.

use crate::resources::domain::DomainSpec;
use crate::resources::observed::{Live, ObservedDomain, PowerState};
use std::sync::Once;
use std::time::{Duration, Instant};
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
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
}

fn quiet() {
    static ONCE: Once = Once::new();
    ONCE.call_once(virt::error::clear_error_callback);
}

impl Libvirt {
    /// Connects to `uri`.
    pub fn open(uri: &str) -> Result<Libvirt, LibvirtError> {
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
        })
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

    /// Every domain on the host, managed or not, sorted by name.
    pub fn domains(&self) -> Result<Vec<ObservedDomain>, LibvirtError> {
        let mut out = Vec::new();
        for dom in self
            .conn
            .list_all_domains(0)
            .map_err(self.err("list domains"))?
        {
            match self.observe_domain(&dom) {
                Ok(d) => out.push(d),
                // Undefined by someone else between the listing and now: it
                // is simply not there any more.
                Err(_)
                    if self
                        .conn
                        .lookup_domain_by_uuid_string(&dom.uuid_string().unwrap_or_default())
                        .is_err() => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        Ok(out)
    }

    fn observe_domain(&self, dom: &Domain) -> Result<ObservedDomain, LibvirtError> {
        {
            let name = dom.name().map_err(self.err("domain name"))?;
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
            let state = match dom.state().map_err(self.err(what("state")))?.0 {
                virt::enumutil::Enum::Known(DomainState::Running | DomainState::Blocked) => {
                    PowerState::Running
                }
                virt::enumutil::Enum::Known(DomainState::Paused | DomainState::PMSuspended) => {
                    PowerState::Paused
                }
                virt::enumutil::Enum::Known(DomainState::Shutoff | DomainState::Crashed) => {
                    PowerState::Stopped
                }
                _ => PowerState::Other,
            };
            let autostart = dom.autostart().map_err(self.err(what("autostart")))?;
            let live = if state == PowerState::Running || state == PowerState::Paused {
                let live_xml = dom.xml_desc(0).map_err(self.err(what("read live XML")))?;
                DomainSpec::from_xml(&live_xml).ok().map(|s| Live {
                    vcpus: s.vcpus,
                    memory_mib: s.current_memory_mib,
                })
            } else {
                None
            };
            let mut disk_sizes = std::collections::BTreeMap::new();
            for d in &config.disks {
                // A missing image is observation, not failure: it shows as size 0.
                let cap = dom
                    .block_info(&d.target, 0)
                    .map(|b| b.capacity)
                    .unwrap_or(0);
                disk_sizes.insert(d.target.clone(), cap);
            }
            let addresses = if state == PowerState::Running {
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
        self.conn
            .define_domain_xml(xml)
            .map(|_| ())
            .map_err(self.err("define domain"))
    }

    /// Starts a defined domain; already running is fine.
    pub fn start(&self, name: &str) -> Result<(), LibvirtError> {
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
        if self.shutdown_wait(name, grace)? {
            return Ok(true);
        }
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
        let dom = self.lookup(name)?;
        if !dom
            .is_active()
            .map_err(self.err(format!("domain {name}: state")))?
        {
            return Ok(true);
        }
        let _ = dom.shutdown();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !dom
                .is_active()
                .map_err(self.err(format!("domain {name}: state")))?
            {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(false)
    }

    /// Removes a stopped domain's definition (its disks are not touched).
    pub fn undefine(&self, name: &str) -> Result<(), LibvirtError> {
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
        let dom = self.lookup(name)?;
        dom.set_memory_flags(mib * 1024, sys::VIR_DOMAIN_AFFECT_LIVE)
            .map_err(self.err(format!("domain {name}: set memory")))
    }

    /// Sets whether the domain starts with the host.
    pub fn set_autostart(&self, name: &str, on: bool) -> Result<(), LibvirtError> {
        let dom = self.lookup(name)?;
        dom.set_autostart(on)
            .map_err(self.err(format!("domain {name}: set autostart")))
    }

    /// Grows a running guest's disk so the guest sees the new size at once.
    pub fn block_resize(&self, name: &str, target: &str, bytes: u64) -> Result<(), LibvirtError> {
        let dom = self.lookup(name)?;
        dom.block_resize(target, bytes, sys::VIR_DOMAIN_BLOCK_RESIZE_BYTES)
            .map_err(self.err(format!("domain {name}: resize {target}")))
    }

    /// Takes an internal snapshot `name` of every disk of a domain (with the
    /// guest's memory when it runs: QEMU requires that for internal
    /// checkpoints). Exists already is fine.
    pub fn snapshot(&self, name: &str, snapshot: &str) -> Result<(), LibvirtError> {
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
        self.conn.lookup_domain_by_name(name).is_ok()
    }

    /// True when the domain is running.
    pub fn is_running(&self, name: &str) -> Result<bool, LibvirtError> {
        match self.conn.lookup_domain_by_name(name) {
            Ok(d) => d
                .is_active()
                .map_err(self.err(format!("domain {name}: state"))),
            Err(_) => Ok(false),
        }
    }
}
