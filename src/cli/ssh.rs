//! `virtfleet ssh NAME [-- COMMAND...]`: log into a machine.
//!
//! Resolves the guest's address from its host (DHCP lease, then guest
//! agent, then ARP: see `host::libvirt`), the user (`--user`, else the
//! machine's `cloudInit.user`) and, for a host reached over SSH, a
//! `ProxyJump` through it; then replaces itself with the system `ssh`, so
//! the user's own config, agent and keys apply and the exit status is the
//! remote command's (255 for ssh's own failures).

use super::Context;
use crate::host::libvirt::Libvirt;
use crate::host::ssh::SshTarget;
use anyhow::{Context as _, bail};

/// Log into a machine with the system ssh.
///
/// The address is the guest's (DHCP lease of a libvirt network first, then the
/// qemu guest agent, then the host's ARP table); the user is --user, else the
/// machine's cloudInit.user. A machine on a host reached over SSH (a qemu+ssh://
/// URI or sshTarget) is reached through that host (ProxyJump); its key must be
/// in your ssh config or agent. Your ssh config applies as usual. The exit
/// status is the remote command's.
///
/// Examples:
///   virtfleet ssh web
///   virtfleet ssh web -- systemctl status nginx
///   virtfleet ssh web -i ~/.ssh/lab -o StrictHostKeyChecking=accept-new -- uptime
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The machine.
    name: String,
    /// Log in as this user [default: the machine's cloudInit.user].
    #[arg(short = 'l', long)]
    user: Option<String>,
    /// Identity file, passed to ssh as -i.
    #[arg(short = 'i', long, value_name = "FILE")]
    identity: Option<String>,
    /// An ssh option, passed as -o (repeatable).
    #[arg(short = 'o', long = "option", value_name = "OPTION")]
    options: Vec<String>,
    /// Print the ssh command line instead of running it.
    #[arg(long)]
    dry_run: bool,
    /// The command to run (after `--`); none for an interactive login.
    #[arg(last = true)]
    command: Vec<String>,
}

/// The jump host for a machine's host: its `sshTarget`, else the host of
/// a `qemu+ssh://` URI; none for a local libvirt.
fn jump_of(host: &crate::fleet::Host) -> Option<String> {
    let t = match &host.ssh_target {
        Some(t) => SshTarget::parse(t).ok()?,
        None => SshTarget::from_uri(&host.uri)?,
    };
    let mut s = String::new();
    if let Some(u) = &t.user {
        s.push_str(u);
        s.push('@');
    }
    if t.host.contains(':') {
        s.push_str(&format!("[{}]", t.host));
    } else {
        s.push_str(&t.host);
    }
    if let Some(p) = t.port {
        s.push_str(&format!(":{p}"));
    }
    Some(s)
}

/// The address to use: the first IPv4 one, else the first of any kind.
fn pick(addresses: &[String]) -> Option<&String> {
    addresses
        .iter()
        .find(|a| !a.contains(':'))
        .or_else(|| addresses.first())
}

/// The ssh argv (without `ssh` itself).
fn ssh_argv(
    jump: Option<&str>,
    user: &str,
    address: &str,
    identity: Option<&str>,
    options: &[String],
    command: &[String],
) -> Vec<String> {
    let mut a = Vec::new();
    if let Some(j) = jump {
        a.extend(["-J".into(), j.to_owned()]);
    }
    if let Some(i) = identity {
        a.extend(["-i".into(), i.to_owned()]);
    }
    for o in options {
        a.extend(["-o".into(), o.clone()]);
    }
    a.extend(["-l".into(), user.to_owned(), address.to_owned()]);
    if !command.is_empty() {
        a.push("--".into());
        a.extend(command.iter().cloned());
    }
    a
}

/// Resolves and runs ssh; returns only when it could not be started.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<u8> {
    let mut fleet = super::load_fleet(ctx)?;
    let name = crate::fleet::VmName::new(&args.name)
        .map_err(|e| anyhow::anyhow!("machine name {:?}: {e}", args.name))?;
    super::execute::locate_machine(&mut fleet, &name, super::now());
    let Some(m) = fleet.machines.get(&name) else {
        bail!("machine {name} is not in {}", fleet.source.display());
    };
    let host = &fleet.hosts[&m.host];
    let user = match (&args.user, &m.cloud_init) {
        (Some(u), _) => u.clone(),
        (None, Some(ci)) => ci.user.clone(),
        (None, None) => bail!(
            "machine {name} has no cloudInit, so virtfleet does not know its user: give one with --user"
        ),
    };
    let lv = Libvirt::open(&host.uri)?;
    let addresses = lv
        .addresses_of(name.as_str())
        .with_context(|| format!("machine {name} on host {}", host.name))?;
    let Some(address) = pick(&addresses) else {
        bail!(
            "machine {name} on host {} has no address yet (not running, no DHCP lease, no guest agent answer, nothing in ARP); `virtfleet status` shows it once it has one",
            host.name
        );
    };
    let argv = ssh_argv(
        jump_of(host).as_deref(),
        &user,
        address,
        args.identity.as_deref(),
        &args.options,
        &args.command,
    );
    if args.dry_run {
        println!(
            "ssh {}",
            crate::host::ssh::remote_command(&argv.iter().map(String::as_str).collect::<Vec<_>>())
        );
        return Ok(super::EXIT_OK);
    }
    let err =
        std::os::unix::process::CommandExt::exec(std::process::Command::new("ssh").args(&argv));
    Err(anyhow::anyhow!("cannot run ssh: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_jumps_through_remote_hosts_and_keeps_the_command_whole() {
        let a = ssh_argv(
            Some("root@hv1:2222"),
            "debian",
            "192.168.122.10",
            Some("/k"),
            &["StrictHostKeyChecking=no".into()],
            &["sh".into(), "-c".into(), "echo a b".into()],
        );
        assert_eq!(
            a,
            [
                "-J",
                "root@hv1:2222",
                "-i",
                "/k",
                "-o",
                "StrictHostKeyChecking=no",
                "-l",
                "debian",
                "192.168.122.10",
                "--",
                "sh",
                "-c",
                "echo a b"
            ]
        );
        let local = ssh_argv(None, "u", "10.0.0.2", None, &[], &[]);
        assert_eq!(local, ["-l", "u", "10.0.0.2"]);
    }

    #[test]
    fn ipv4_is_preferred() {
        let a = vec!["fd00::5".to_owned(), "10.0.0.5".to_owned()];
        assert_eq!(pick(&a).map(String::as_str), Some("10.0.0.5"));
        assert_eq!(pick(&[]), None);
    }
}
