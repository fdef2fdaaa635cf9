//! Pure descriptions of the objects virtfleet manages on a host: the domain
//! definition and its XML ([`domain`]), deterministic identities
//! ([`identity`]), where disks live ([`layout`]), the cloud-init seed
//! ([`seed`]), and what observation found ([`observed`]).
//!
//! No I/O happens here. The planner, the renderers, the storage backends and
//! the libvirt layer all build on these types, which is why they sit below
//! every one of them: sharing them creates no import between those layers.

pub mod domain;
pub mod identity;
pub mod layout;
pub mod observed;
pub mod seed;
