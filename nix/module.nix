# NixOS module: continuous convergence of a virtfleet fleet.
#
#   imports = [ /path/to/virtfleet/nix/module.nix ];
#   services.virtfleet = { enable = true; fleetFile = "/etc/virtfleet/fleet.dhall"; };
#
# mode = "timer": a oneshot `virtfleet apply --unattended` started by a
# timer at `interval` (an OnCalendar expression). mode = "watch": a
# long-running `virtfleet watch` that re-plans when the fleet, its imports
# or the lockfile change, and every --resync interval.
#
# Either way the unattended policy applies: changes that restart or stop
# guests, and destroys, are only made when allowRestart / allowDestroy (or
# the fleet's own settings) allow them; otherwise they are recorded as
# pending in the run history and the metrics, and the run exits 4, which
# this unit counts as success (nothing failed; a person has to decide).
#
# This module uses only a small part of nixpkgs' `lib` (options, types,
# mkIf, hasPrefix, removePrefix, optional(s), literalExpression), so it can
# be evaluated and checked without NixOS: see tests/nixos_module.rs.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.virtfleet;
  inherit (lib)
    mkOption
    mkEnableOption
    mkIf
    types
    optional
    optionals
    hasPrefix
    removePrefix
    literalExpression
    ;

  # One argument as systemd reads it in ExecStart=: double-quoted, JSON's
  # escapes are systemd's C escapes, and `%` / `$` are doubled so that no
  # specifier or variable is expanded in a path or a flag.
  escapeArg =
    arg:
    builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON (toString arg));

  # systemd creates and owns directories under /var/lib and /var/cache
  # (StateDirectory=, CacheDirectory=); a directory elsewhere must exist
  # and is only made writable.
  managed = prefix: dir: hasPrefix prefix dir && dir != removePrefix "/" prefix;
  stateManaged = managed "/var/lib/" cfg.stateDir;
  cacheManaged = managed "/var/cache/" cfg.cacheDir;

  command =
    [
      "${cfg.package}/bin/virtfleet"
      "--fleet"
      cfg.fleetFile
    ]
    ++ optionals (cfg.lockFile != null) [
      "--lock"
      cfg.lockFile
    ]
    ++ [
      "--state-dir"
      cfg.stateDir
      "--cache-dir"
      cfg.cacheDir
    ]
    ++ (if cfg.mode == "timer" then [ "apply" "--unattended" ] else [ "watch" ])
    ++ optional cfg.allowRestart "--allow-restart"
    ++ optional cfg.allowDestroy "--allow-destroy"
    ++ [
      "--shutdown-timeout"
      cfg.shutdownTimeout
    ]
    ++ cfg.extraArgs;

  hardening = {
    # Root: the libvirt system socket, and the storage directories of local
    # Dir hosts, which libvirt gives to the qemu user while a guest runs.
    # Everything else is taken away.
    ProtectSystem = "strict";
    # Read-only, not hidden: ssh reads root's ~/.ssh (known_hosts, config).
    ProtectHome = "read-only";
    PrivateTmp = true;
    ReadWritePaths =
      optional (!stateManaged) cfg.stateDir
      ++ optional (!cacheManaged) cfg.cacheDir
      ++ cfg.readWritePaths;
    NoNewPrivileges = true;
    CapabilityBoundingSet = [
      "CAP_CHOWN"
      "CAP_DAC_OVERRIDE"
      "CAP_FOWNER"
    ];
    # AF_UNIX: the libvirt socket; AF_INET(6): SSH and image downloads;
    # AF_NETLINK: address lookups.
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
      "AF_NETLINK"
    ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    ProtectClock = true;
    ProtectControlGroups = true;
    ProtectHostname = true;
    ProtectKernelLogs = true;
    ProtectKernelModules = true;
    ProtectKernelTunables = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" ];
    UMask = "0077";
  };
in
{
  options.services.virtfleet = {
    enable = mkEnableOption "virtfleet, continuous convergence of a libvirt fleet";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = literalExpression "pkgs.callPackage ./nix/package.nix { }";
      description = "The virtfleet package.";
    };

    fleetFile = mkOption {
      type = types.str;
      example = "/etc/virtfleet/fleet.dhall";
      description = ''
        Absolute path of the fleet file (a path on the machine, not copied
        to the store: watch mode follows edits to it and to the files it
        imports).
      '';
    };

    lockFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "The image lockfile; null: images.lock beside the fleet file.";
    };

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/virtfleet";
      description = ''
        Run locks, the state file (run history) and the evaluation cache.
        Under /var/lib it is the unit's StateDirectory=; elsewhere it must
        exist and is made writable.
      '';
    };

    cacheDir = mkOption {
      type = types.str;
      default = "/var/cache/virtfleet";
      description = ''
        Verified base images. Under /var/cache it is the unit's
        CacheDirectory=; elsewhere it must exist and is made writable.
      '';
    };

    mode = mkOption {
      type = types.enum [
        "timer"
        "watch"
      ];
      default = "timer";
      description = ''
        "timer": a oneshot `virtfleet apply --unattended` at `interval`.
        "watch": a long-running `virtfleet watch` (re-plans on file changes
        and every --resync, 5 minutes unless given in extraArgs).
      '';
    };

    interval = mkOption {
      type = types.str;
      default = "*:0/15";
      example = "hourly";
      description = "When the timer runs (systemd OnCalendar=); timer mode only.";
    };

    allowRestart = mkOption {
      type = types.bool;
      default = false;
      description = "Apply changes that restart or stop guests (--allow-restart).";
    };

    allowDestroy = mkOption {
      type = types.bool;
      default = false;
      description = "Destroy machines removed from the fleet and purge expired trash (--allow-destroy).";
    };

    shutdownTimeout = mkOption {
      type = types.str;
      default = "60s";
      description = ''
        How long a guest may take to shut down by ACPI before it is powered
        off (--shutdown-timeout). Also bounds how long stopping the service
        waits for the step in flight (TimeoutStopSec= is this plus 30s).
      '';
    };

    runTimeout = mkOption {
      type = types.str;
      default = "1h";
      example = "30min";
      description = ''
        Timer mode: how long one run may take before systemd stops it
        (TimeoutStartSec=). A run that never ends (a host that stops
        answering in the middle of a step) would otherwise keep the timer
        from ever starting the next one.
      '';
    };

    sshKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/etc/virtfleet/id_ed25519";
      description = ''
        SSH private key for hosts reached over SSH whose URI names no
        keyfile=. Passed as a systemd credential (LoadCredential=), so the
        file may stay readable by root only.
      '';
    };

    readWritePaths = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "/var/lib/libvirt/images"
        "/var/lib/prometheus-node-exporter"
      ];
      description = ''
        Directories the service may write besides its state and cache
        directories (the file system is otherwise read-only to it): the
        storage directories of Dir hosts on this machine, the directory of
        a --metrics-file.
      '';
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "--metrics-file"
        "/var/lib/prometheus-node-exporter/virtfleet.prom"
      ];
      description = "Further arguments, after the command's own (e.g. --json-logs, --resync 2m).";
    };
  };

  config = mkIf cfg.enable {
    systemd.services.virtfleet = {
      description =
        if cfg.mode == "timer" then
          "virtfleet: converge the fleet once (unattended)"
        else
          "virtfleet: keep the fleet converged (watch)";
      after = [
        "libvirtd.service"
        "network-online.target"
      ];
      wants = [
        "libvirtd.service"
        "network-online.target"
      ];
      wantedBy = optional (cfg.mode == "watch") "multi-user.target";
      serviceConfig =
        hardening
        // {
          ExecStart = builtins.concatStringsSep " " (map escapeArg command);
          StateDirectory = mkIf stateManaged (removePrefix "/var/lib/" cfg.stateDir);
          # virtfleet creates its state directory 0700 (history describes
          # the machines); systemd would make it 0755.
          StateDirectoryMode = mkIf stateManaged "0700";
          CacheDirectory = mkIf cacheManaged (removePrefix "/var/cache/" cfg.cacheDir);
          # The step in flight finishes on SIGTERM; a shutdown step may take
          # the whole shutdown timeout.
          TimeoutStopSec = "${cfg.shutdownTimeout} 30s";
          # SIGTERM to virtfleet only: the ssh (and qemu-img) processes of
          # the step in flight must live until it finishes; whatever is left
          # gets SIGKILL at the timeout.
          KillMode = "mixed";
          LoadCredential = mkIf (cfg.sshKeyFile != null) "ssh-key:${cfg.sshKeyFile}";
          Environment = mkIf (cfg.sshKeyFile != null) "VIRTFLEET_SSH_KEY=%d/ssh-key";
        }
        // (
          if cfg.mode == "timer" then
            {
              Type = "oneshot";
              # A oneshot may otherwise run for ever, and the timer never
              # starts a unit that is still active.
              TimeoutStartSec = cfg.runTimeout;
              # 4: changes left pending for lack of permission; nothing failed.
              SuccessExitStatus = "4";
            }
          else
            {
              Type = "exec";
              ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
              Restart = "on-failure";
              RestartSec = "10s";
            }
        );
    };

    systemd.timers.virtfleet = mkIf (cfg.mode == "timer") {
      description = "virtfleet: converge the fleet at ${cfg.interval}";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.interval;
        # A run missed while the machine was off happens at boot.
        Persistent = true;
      };
    };
  };
}
