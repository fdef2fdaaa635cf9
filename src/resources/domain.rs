//! Domain XML: the model's view of a libvirt domain, rendered and parsed.
//!
//! [`DomainSpec`] holds exactly the fields virtfleet manages. The desired
//! spec is rendered to XML for `define`; the observed domain's XML is parsed
//! back into a spec. Both sides go through the same renderer for display, so
//! a diff shows real differences, never libvirt's rewriting of units or
//! element order. Unknown elements in observed XML are ignored.

use crate::fleet::{CpuMode, DomainType, Network};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// XML namespace of virtfleet's ownership metadata.
pub const METADATA_NS: &str = "urn:virtfleet:domain:1";

/// Who owns a domain: written into its `<metadata>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    /// The fleet that defined the domain: only that fleet ever changes it.
    pub fleet: String,
    /// The host it was defined for.
    pub host: String,
    /// The machine's name in the fleet.
    pub machine: String,
    /// Hash of the machine's spec when the domain was last defined.
    pub spec_hash: String,
    /// The machine was `protect`ed when last defined: never destroy it,
    /// even after it disappears from the fleet.
    pub protect: bool,
    /// sha256 of the cloud-init seed attached when last defined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
}

/// One disk device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRef {
    /// Guest device name: vda, vdb, ...
    pub target: String,
    /// Host path of the image.
    pub path: String,
    /// qcow2 or raw.
    pub format: String,
    /// Attached read-only (the cloud-init seed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly: bool,
}

/// The first NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Nic {
    Network { network: String, mac: String },
    Bridge { bridge: String, mac: String },
    User { mac: String },
}

/// The fields of a domain virtfleet manages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainSpec {
    /// The domain's name (the machine's).
    pub name: String,
    /// Derived from (fleet, machine), or kept from an existing definition
    /// (see `identity`): stable across rebuilds and moves.
    pub uuid: String,
    /// `kvm` or `qemu` (TCG).
    pub domain_type: DomainType,
    /// The guest CPU model.
    pub cpu_mode: CpuMode,
    /// vCPUs.
    pub vcpus: u32,
    /// Maximum memory, in MiB.
    pub memory_mib: u64,
    /// Memory at boot (balloon target), in MiB.
    pub current_memory_mib: u64,
    /// Disks in guest order (vda first).
    pub disks: Vec<DiskRef>,
    /// The network interface, if virtfleet defines one.
    pub nic: Option<Nic>,
    /// virtfleet's ownership marker; `None` on domains it does not own.
    pub owner: Option<Owner>,
}

impl DomainSpec {
    /// A domain observation did not read (not this fleet's: neither named
    /// like one of its machines nor carrying one of its UUIDs): its name and
    /// UUID are real, everything else is a placeholder, and it has no owner,
    /// so nothing ever plans a change to it.
    pub fn foreign(name: &str, uuid: &str) -> DomainSpec {
        DomainSpec {
            name: name.into(),
            uuid: uuid.into(),
            domain_type: DomainType::Kvm,
            cpu_mode: CpuMode::Default,
            vcpus: 0,
            memory_mib: 0,
            current_memory_mib: 0,
            disks: Vec::new(),
            nic: None,
            owner: None,
        }
    }
}

impl Nic {
    /// The NIC for a host network setting.
    pub fn for_network(net: &Network, mac: String) -> Nic {
        match net {
            Network::Libvirt(n) => Nic::Network {
                network: n.clone(),
                mac,
            },
            Network::Bridge(b) => Nic::Bridge {
                bridge: b.clone(),
                mac,
            },
            Network::User => Nic::User { mac },
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// Guest disk device name for the `i`th disk: vda, vdb, ... vdz, vdaa, ...
pub fn target_name(i: usize) -> String {
    let letters = |mut n: usize| {
        let mut s = Vec::new();
        loop {
            s.push(b'a' + (n % 26) as u8);
            if n < 26 {
                break;
            }
            n = n / 26 - 1;
        }
        s.reverse();
        String::from_utf8(s).unwrap_or_default()
    };
    format!("vd{}", letters(i))
}

impl DomainSpec {
    /// The XML given to libvirt's `define`. Deterministic for a given spec.
    pub fn to_xml(&self) -> String {
        let mut x = String::new();
        let kind = match self.domain_type {
            DomainType::Kvm => "kvm",
            DomainType::Qemu => "qemu",
        };
        let _ = writeln!(x, "<domain type='{kind}'>");
        let _ = writeln!(x, "  <name>{}</name>", esc(&self.name));
        let _ = writeln!(x, "  <uuid>{}</uuid>", esc(&self.uuid));
        if let Some(o) = &self.owner {
            let _ = writeln!(x, "  <metadata>");
            let _ = writeln!(
                x,
                "    <vf:owner xmlns:vf='{METADATA_NS}' fleet='{}' host='{}' machine='{}' spec='{}' protect='{}'{}/>",
                esc(&o.fleet),
                esc(&o.host),
                esc(&o.machine),
                esc(&o.spec_hash),
                o.protect,
                o.seed
                    .as_ref()
                    .map(|s| format!(" seed='{}'", esc(s)))
                    .unwrap_or_default()
            );
            let _ = writeln!(x, "  </metadata>");
        }
        let _ = writeln!(
            x,
            "  <memory unit='KiB'>{}</memory>",
            self.memory_mib * 1024
        );
        let _ = writeln!(
            x,
            "  <currentMemory unit='KiB'>{}</currentMemory>",
            self.current_memory_mib * 1024
        );
        let _ = writeln!(x, "  <vcpu placement='static'>{}</vcpu>", self.vcpus);
        let _ = writeln!(
            x,
            "  <os>\n    <type arch='x86_64'>hvm</type>\n    <boot dev='hd'/>\n  </os>"
        );
        let _ = writeln!(x, "  <features>\n    <acpi/>\n    <apic/>\n  </features>");
        self.write_cpu(&mut x);
        x.push_str("  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n");
        x.push_str("  <devices>\n");
        self.write_disks(&mut x);
        self.write_nic(&mut x);
        x.push_str("    <serial type='pty'/>\n    <console type='pty'/>\n");
        // The guest agent's channel: `status` asks the agent for addresses
        // when no DHCP lease names the guest. Not parsed back: a domain
        // defined without it is not redefined for it alone.
        x.push_str("    <channel type='unix'>\n      <target type='virtio' name='org.qemu.guest_agent.0'/>\n    </channel>\n");
        x.push_str("    <memballoon model='virtio'/>\n");
        x.push_str("  </devices>\n</domain>\n");
        x
    }

    /// `<cpu>`: absent for the hypervisor's default model.
    fn write_cpu(&self, x: &mut String) {
        match &self.cpu_mode {
            CpuMode::HostPassthrough => x.push_str("  <cpu mode='host-passthrough'/>\n"),
            CpuMode::HostModel => x.push_str("  <cpu mode='host-model'/>\n"),
            CpuMode::Model(m) => {
                let _ = writeln!(
                    x,
                    "  <cpu mode='custom' match='exact'>\n    <model fallback='forbid'>{}</model>\n  </cpu>",
                    esc(m)
                );
            }
            CpuMode::Default => {}
        }
    }

    fn write_disks(&self, x: &mut String) {
        for d in &self.disks {
            // zvols (and other devices) are block disks; images are files.
            let (kind, attr) = if d.path.starts_with("/dev/") {
                ("block", "dev")
            } else {
                ("file", "file")
            };
            if d.readonly {
                let _ = writeln!(
                    x,
                    "    <disk type='{kind}' device='disk'>\n      <driver name='qemu' type='{}'/>\n      <source {attr}='{}'/>\n      <target dev='{}' bus='virtio'/>\n      <readonly/>\n    </disk>",
                    esc(&d.format),
                    esc(&d.path),
                    esc(&d.target)
                );
                continue;
            }
            let _ = writeln!(
                x,
                "    <disk type='{kind}' device='disk'>\n      <driver name='qemu' type='{}' cache='none' discard='unmap'/>\n      <source {attr}='{}'/>\n      <target dev='{}' bus='virtio'/>\n    </disk>",
                esc(&d.format),
                esc(&d.path),
                esc(&d.target)
            );
        }
    }

    fn write_nic(&self, x: &mut String) {
        let (kind, mac, source) = match &self.nic {
            Some(Nic::Network { network, mac }) => ("network", mac, Some(("network", network))),
            Some(Nic::Bridge { bridge, mac }) => ("bridge", mac, Some(("bridge", bridge))),
            Some(Nic::User { mac }) => ("user", mac, None),
            None => return,
        };
        let _ = writeln!(x, "    <interface type='{kind}'>");
        let _ = writeln!(x, "      <mac address='{}'/>", esc(mac));
        if let Some((attr, value)) = source {
            let _ = writeln!(x, "      <source {attr}='{}'/>", esc(value));
        }
        let _ = writeln!(x, "      <model type='virtio'/>\n    </interface>");
    }

    /// Parses the managed fields out of libvirt's XML for a domain.
    pub fn from_xml(xml: &str) -> Result<DomainSpec, String> {
        let doc =
            roxmltree::Document::parse(xml).map_err(|e| format!("cannot parse domain XML: {e}"))?;
        let root = doc.root_element();
        let text = |tag: &str| {
            child(root, tag)
                .and_then(|n| n.text())
                .map(|t| t.trim().to_owned())
        };
        let name = text("name").ok_or("domain XML has no <name>")?;
        let uuid = text("uuid").unwrap_or_default();
        let domain_type = match root.attribute("type") {
            Some("kvm") => DomainType::Kvm,
            _ => DomainType::Qemu,
        };
        let memory_mib = child(root, "memory").map(mib).unwrap_or(0);
        let current_memory_mib = child(root, "currentMemory").map_or(memory_mib, mib);
        let vcpus = text("vcpu").and_then(|v| v.parse().ok()).unwrap_or(0);
        let devices = child(root, "devices");
        Ok(DomainSpec {
            name,
            uuid,
            domain_type,
            cpu_mode: child(root, "cpu").map_or(CpuMode::Default, cpu_mode),
            vcpus,
            memory_mib,
            current_memory_mib,
            disks: devices.map(disks).unwrap_or_default(),
            nic: devices.and_then(nic),
            owner: child(root, "metadata").and_then(owner),
        })
    }
}

type Node<'a, 'i> = roxmltree::Node<'a, 'i>;

/// The first child element of `n` named `tag`.
fn child<'a, 'i>(n: Node<'a, 'i>, tag: &str) -> Option<Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(tag))
}

/// A memory element (`<memory unit='KiB'>`) in MiB, whatever its unit.
fn mib(n: Node<'_, '_>) -> u64 {
    let v: u64 = n.text().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
    match n.attribute("unit").unwrap_or("KiB") {
        "b" | "bytes" => v / (1024 * 1024),
        "KB" => v * 1000 / (1024 * 1024),
        "k" | "KiB" => v / 1024,
        "MB" => v * 1_000_000 / (1024 * 1024),
        "M" | "MiB" => v,
        "G" | "GiB" => v * 1024,
        _ => v / 1024,
    }
}

fn cpu_mode(c: Node<'_, '_>) -> CpuMode {
    match c.attribute("mode") {
        Some("host-passthrough") => CpuMode::HostPassthrough,
        Some("host-model") => CpuMode::HostModel,
        _ => match child(c, "model").and_then(|m| m.text()) {
            Some(m) => CpuMode::Model(m.trim().to_owned()),
            None => CpuMode::Default,
        },
    }
}

/// Every `<disk device='disk'>` (not CD-ROMs), in document order.
fn disks(devices: Node<'_, '_>) -> Vec<DiskRef> {
    devices
        .children()
        .filter(|c| c.has_tag_name("disk") && c.attribute("device") == Some("disk"))
        .map(|d| {
            let attr = |tag: &str, names: &[&str]| {
                child(d, tag)
                    .and_then(|s| names.iter().find_map(|a| s.attribute(*a)))
                    .map(str::to_owned)
            };
            DiskRef {
                target: attr("target", &["dev"]).unwrap_or_default(),
                path: attr("source", &["file", "dev"]).unwrap_or_default(),
                format: attr("driver", &["type"]).unwrap_or_else(|| "raw".into()),
                readonly: child(d, "readonly").is_some(),
            }
        })
        .collect()
}

/// The first `<interface>`, if it is of a kind virtfleet defines.
fn nic(devices: Node<'_, '_>) -> Option<Nic> {
    let i = devices.children().find(|c| c.has_tag_name("interface"))?;
    let mac = child(i, "mac")
        .and_then(|m| m.attribute("address"))
        .unwrap_or("")
        .to_owned();
    let source = |attr: &str| {
        child(i, "source")
            .and_then(|s| s.attribute(attr))
            .unwrap_or("")
            .to_owned()
    };
    match i.attribute("type") {
        Some("network") => Some(Nic::Network {
            network: source("network"),
            mac,
        }),
        Some("bridge") => Some(Nic::Bridge {
            bridge: source("bridge"),
            mac,
        }),
        Some("user") => Some(Nic::User { mac }),
        _ => None,
    }
}

/// virtfleet's `<vf:owner>` in `<metadata>`: the ownership marker.
fn owner(metadata: Node<'_, '_>) -> Option<Owner> {
    let o = metadata.children().find(|c| {
        c.tag_name().namespace() == Some(METADATA_NS) && c.tag_name().name() == "owner"
    })?;
    let attr = |a: &str| o.attribute(a).unwrap_or("").to_owned();
    Some(Owner {
        fleet: attr("fleet"),
        host: attr("host"),
        machine: attr("machine"),
        spec_hash: attr("spec"),
        protect: o.attribute("protect") == Some("true"),
        seed: o.attribute("seed").map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DomainSpec {
        DomainSpec {
            name: "web".into(),
            uuid: "0f0e0d0c-0b0a-8908-8706-050403020100".into(),
            domain_type: DomainType::Qemu,
            cpu_mode: CpuMode::Model("Haswell".into()),
            vcpus: 2,
            memory_mib: 512,
            current_memory_mib: 512,
            disks: vec![
                DiskRef {
                    target: "vda".into(),
                    path: "/srv/vf/disks/web-root/disk.qcow2".into(),
                    format: "qcow2".into(),
                    readonly: false,
                },
                DiskRef {
                    target: "vdb".into(),
                    path: "/srv/vf/disks/web-data/disk.qcow2".into(),
                    format: "qcow2".into(),
                    readonly: false,
                },
                DiskRef {
                    target: "vdc".into(),
                    path: "/srv/vf/disks/web.cidata/seed.img".into(),
                    format: "raw".into(),
                    readonly: true,
                },
            ],
            nic: Some(Nic::Network {
                network: "default".into(),
                mac: "52:54:00:01:02:03".into(),
            }),
            owner: Some(Owner {
                fleet: "lab".into(),
                host: "hv1".into(),
                machine: "web".into(),
                spec_hash: "abc".into(),
                protect: true,
                seed: Some("5eed".into()),
            }),
        }
    }

    #[test]
    fn render_then_parse_round_trips() {
        let s = spec();
        assert_eq!(DomainSpec::from_xml(&s.to_xml()).unwrap(), s);
        let mut u = spec();
        u.nic = Some(Nic::User {
            mac: "52:54:00:01:02:03".into(),
        });
        u.cpu_mode = CpuMode::Default;
        u.owner = None;
        assert_eq!(DomainSpec::from_xml(&u.to_xml()).unwrap(), u);
    }

    #[test]
    fn parses_libvirt_rewritten_units_and_ignores_unknown_elements() {
        let xml = "<domain type='kvm' id='3'><name>x</name><uuid>u</uuid><memory unit='MiB'>1024</memory>\
            <vcpu placement='static' current='1'>4</vcpu><cpu mode='host-model' check='partial'/>\
            <devices><emulator>/usr/bin/qemu</emulator><disk type='file' device='cdrom'><source file='/seed.iso'/></disk>\
            <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/zvol/tank/x'/><target dev='vda' bus='virtio'/></disk></devices></domain>";
        let s = DomainSpec::from_xml(xml).unwrap();
        assert_eq!(
            (s.memory_mib, s.current_memory_mib, s.vcpus),
            (1024, 1024, 4)
        );
        assert_eq!(s.cpu_mode, CpuMode::HostModel);
        assert_eq!(
            s.disks,
            [DiskRef {
                target: "vda".into(),
                path: "/dev/zvol/tank/x".into(),
                format: "raw".into(),
                readonly: false,
            }]
        );
        assert_eq!(s.owner, None);
    }

    #[test]
    fn target_names() {
        assert_eq!(
            [0, 1, 25, 26, 27].map(target_name),
            ["vda", "vdb", "vdz", "vdaa", "vdab"]
        );
    }
}
