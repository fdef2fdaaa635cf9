# STAND-IN for NixOS's module evaluation and systemd unit generation, for
# tests/nixos_module.rs: evaluates nix/module.nix with `settings` as
# services.virtfleet (options get their defaults, values are type-checked),
# resolves mkIf, and renders systemd.services.virtfleet and
# systemd.timers.virtfleet to unit file text the way NixOS writes them
# (description/after/wants -> [Unit]; serviceConfig/timerConfig ->
# [Service]/[Timer], a list as repeated keys, booleans as true/false;
# wantedBy becomes [Install] WantedBy= here, where NixOS makes symlinks).
{
  settings,
  pkgs,
}:
let
  lib = import ./lib-standin.nix;
  module = import ../../nix/module.nix;

  # The options, declared by the module (its `options` do not depend on
  # `config`, so a first call with an empty config yields them).
  declared =
    (module {
      config = { };
      inherit lib pkgs;
    }).options.services.virtfleet;

  unknown = builtins.filter (n: !(declared ? ${n})) (builtins.attrNames settings);

  value =
    name: opt:
    let
      v =
        if settings ? ${name} then
          settings.${name}
        else if opt ? default then
          opt.default
        else
          throw "services.virtfleet.${name} is used but not defined";
    in
    if opt.type.check v then
      v
    else
      throw "services.virtfleet.${name}: ${builtins.toJSON v} is not a ${opt.type.name}";

  cfg =
    if unknown != [ ] then
      throw "services.virtfleet: no such option: ${builtins.concatStringsSep ", " unknown}"
    else
      builtins.mapAttrs value declared;

  evaluated = module {
    config.services.virtfleet = cfg;
    inherit lib pkgs;
  };

  # mkIf, at the top and inside attribute values (as NixOS allows).
  resolve =
    v:
    if builtins.isAttrs v && (v._type or null) == "if" then
      if v.condition then resolve v.content else null
    else if builtins.isAttrs v && !(v ? outPath) then
      let
        r = builtins.mapAttrs (_: resolve) v;
      in
      builtins.removeAttrs r (builtins.filter (n: r.${n} == null) (builtins.attrNames r))
    else
      v;

  conf = resolve evaluated.config;
  systemd = conf.systemd or { };

  show =
    v:
    if builtins.isBool v then
      (if v then "true" else "false")
    else
      toString v;
  lines =
    key: v:
    if builtins.isList v then
      (if v == [ ] then [ ] else [ "${key}=${builtins.concatStringsSep " " (map show v)}" ])
    else
      [ "${key}=${show v}" ];
  # Lists of words (After=, ReadWritePaths=, SystemCallFilter=...) go on
  # one line, as NixOS writes them; Environment= and LoadCredential= are
  # single strings here.
  section =
    name: attrs:
    let
      keys = builtins.attrNames attrs;
      body = builtins.concatLists (map (k: lines k attrs.${k}) keys);
    in
    if body == [ ] then "" else "[${name}]\n" + builtins.concatStringsSep "\n" body + "\n";

  unitSection =
    u:
    builtins.removeAttrs {
      Description = u.description or null;
      After = u.after or [ ];
      Wants = u.wants or [ ];
    } (if u ? description then [ ] else [ "Description" ]);

  install = u: { WantedBy = u.wantedBy or [ ]; };

  render =
    kind: u: body:
    builtins.concatStringsSep "\n" (
      builtins.filter (s: s != "") [
        (section "Unit" (unitSection u))
        (section kind body)
        (section "Install" (install u))
      ]
    );

  service = systemd.services.virtfleet or null;
  timer = systemd.timers.virtfleet or null;
in
{
  enabled = service != null;
  service = if service == null then null else render "Service" service service.serviceConfig;
  timer = if timer == null then null else render "Timer" timer timer.timerConfig;
  execStart = if service == null then null else service.serviceConfig.ExecStart;
}
