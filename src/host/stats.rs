//! Bulk domain statistics: libvirt's `virConnectGetAllDomainStats` and
//! `virDomainListGetStats`, each one round trip for many domains.
//!
//! The `virt` crate exposes the records but not their typed parameters, so
//! this module reads them through `virt::sys`. It is the crate's only
//! `unsafe` code and stays small: every record list is freed with
//! `virDomainStatsRecordListFree` before the function returns, and nothing
//! points into it afterwards (values are copied out as owned Rust data).

use std::collections::BTreeMap;
use std::ffi::CStr;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

/// One statistic's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any integer type libvirt uses (signed ones are clamped at 0).
    Number(u64),
    /// A floating point value.
    Double(f64),
    /// A boolean.
    Bool(bool),
    /// A string (e.g. `block.0.name`).
    Text(String),
}

impl Value {
    /// The value as a number, if it is one.
    pub fn number(&self) -> Option<u64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// The value as text, if it is text.
    pub fn text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// One domain's statistics: field name (`state.state`, `block.0.capacity`)
/// to value.
pub type Record = BTreeMap<String, Value>;

/// Statistics of every domain on the connection, by domain UUID, in one
/// call. Only groups that do not look at a domain's devices should be asked
/// for here (`VIR_DOMAIN_STATS_STATE`): the devices of domains this fleet
/// does not own are none of its business.
pub fn all(conn: &Connect, groups: u32) -> Result<BTreeMap<String, Record>, virt::error::Error> {
    let mut records: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: conn is a live connection; on success libvirt hands over a
    // NULL-terminated array that `collect` frees.
    let n = unsafe { sys::virConnectGetAllDomainStats(conn.as_ptr(), groups, &mut records, 0) };
    if n < 0 {
        return Err(virt::error::Error::last_error());
    }
    // SAFETY: `records` came from libvirt just now.
    Ok(unsafe { collect(records) })
}

/// Statistics of `domains` (all of one connection) in one call, by UUID.
pub fn of(
    domains: &[&Domain],
    groups: u32,
) -> Result<BTreeMap<String, Record>, virt::error::Error> {
    if domains.is_empty() {
        return Ok(BTreeMap::new());
    }
    // SAFETY: the pointers stay valid while `domains` borrows the handles;
    // the array is NULL-terminated as libvirt requires.
    let mut ptrs: Vec<sys::virDomainPtr> = domains.iter().map(|d| unsafe { d.as_ptr() }).collect();
    ptrs.push(std::ptr::null_mut());
    let mut records: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: as above; libvirt does not keep `ptrs`.
    let n = unsafe { sys::virDomainListGetStats(ptrs.as_mut_ptr(), groups, &mut records, 0) };
    if n < 0 {
        return Err(virt::error::Error::last_error());
    }
    // SAFETY: `records` came from libvirt just now.
    Ok(unsafe { collect(records) })
}

/// Copies a record list out and frees it.
///
/// # Safety
/// `records` must be a NULL-terminated record list returned by libvirt and
/// not freed yet (or NULL).
unsafe fn collect(records: *mut sys::virDomainStatsRecordPtr) -> BTreeMap<String, Record> {
    let mut out = BTreeMap::new();
    if records.is_null() {
        return out;
    }
    let mut i = 0;
    loop {
        // SAFETY: the list is NULL-terminated.
        let rec = unsafe { *records.add(i) };
        if rec.is_null() {
            break;
        }
        i += 1;
        // SAFETY: `rec` is a valid record of the list.
        let (dom, params, nparams) = unsafe { ((*rec).dom, (*rec).params, (*rec).nparams) };
        let mut uuid = [0 as std::os::raw::c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
        // SAFETY: `dom` is owned by the record; the buffer has libvirt's size.
        if unsafe { sys::virDomainGetUUIDString(dom, uuid.as_mut_ptr()) } < 0 {
            continue;
        }
        // SAFETY: libvirt wrote a NUL-terminated string.
        let uuid = unsafe { CStr::from_ptr(uuid.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let mut record = Record::new();
        for j in 0..usize::try_from(nparams).unwrap_or(0) {
            // SAFETY: `params` holds `nparams` entries.
            let p = unsafe { &*params.add(j) };
            // SAFETY: the field is a NUL-terminated name within its array.
            let field = unsafe { CStr::from_ptr(p.field.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: the union member read is the one `type_` names.
            let value = unsafe {
                match p.type_ as u32 {
                    sys::VIR_TYPED_PARAM_INT => Value::Number(p.value.i.max(0) as u64),
                    sys::VIR_TYPED_PARAM_UINT => Value::Number(u64::from(p.value.ui)),
                    sys::VIR_TYPED_PARAM_LLONG => Value::Number(p.value.l.max(0) as u64),
                    sys::VIR_TYPED_PARAM_ULLONG => Value::Number(p.value.ul),
                    sys::VIR_TYPED_PARAM_DOUBLE => Value::Double(p.value.d),
                    sys::VIR_TYPED_PARAM_BOOLEAN => Value::Bool(p.value.b != 0),
                    sys::VIR_TYPED_PARAM_STRING if !p.value.s.is_null() => {
                        Value::Text(CStr::from_ptr(p.value.s).to_string_lossy().into_owned())
                    }
                    _ => continue,
                }
            };
            record.insert(field, value);
        }
        out.insert(uuid, record);
    }
    // SAFETY: frees the records, their parameters and their domain references.
    unsafe { sys::virDomainStatsRecordListFree(records) };
    out
}
