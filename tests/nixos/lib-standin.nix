# STAND-IN for the part of nixpkgs' `lib` that nix/module.nix uses, so the
# module can be evaluated here with Debian's nix-bin, offline, without
# nixpkgs (which cannot be fetched in the test environment). It is not
# nixpkgs: only these functions, written for the tests, with the same
# meaning as nixpkgs' for the way the module calls them. Types check their
# values (as the module system would) so a bad setting fails the evaluation.
let
  mkType = name: check: { inherit name check; };
in
rec {
  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption =
    what:
    mkOption {
      type = types.bool;
      default = false;
      description = "Whether to enable ${what}.";
    };
  mkIf = condition: content: {
    _type = "if";
    inherit condition content;
  };
  literalExpression = text: {
    _type = "literalExpression";
    inherit text;
  };
  optional = cond: x: if cond then [ x ] else [ ];
  optionals = cond: xs: if cond then xs else [ ];
  hasPrefix =
    prefix: s: builtins.substring 0 (builtins.stringLength prefix) s == prefix;
  removePrefix =
    prefix: s:
    if hasPrefix prefix s then
      builtins.substring (builtins.stringLength prefix) (builtins.stringLength s) s
    else
      s;

  types = {
    bool = mkType "bool" builtins.isBool;
    str = mkType "str" builtins.isString;
    package = mkType "package" (
      v: builtins.isAttrs v && v ? outPath || builtins.isPath v || builtins.isString v
    );
    enum = values: mkType "one of ${builtins.toJSON values}" (v: builtins.elem v values);
    nullOr = t: mkType "null or ${t.name}" (v: v == null || t.check v);
    listOf = t: mkType "list of ${t.name}" (v: builtins.isList v && builtins.all t.check v);
  };
}
