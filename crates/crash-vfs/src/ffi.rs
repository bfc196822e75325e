//! The C side: a `sqlite3_vfs` whose files wrap the real VFS's files. Each file is our header
//! followed, in the same allocation SQLite makes of `szOsFile` bytes, by the real file.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;

use libsqlite3_sys as ffi;

use crate::model::SyncOutcome;
use crate::{CrashVfsError, Shared};

/// Our part of a file. `repr(C)` with `sqlite3_file` first, as SQLite requires.
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    shared: *const Shared,
    /// The path the disk model knows the file by; null for files it does not track (temporary
    /// files, which never need to survive a power cut).
    path: *mut PathBuf,
    real: *mut ffi::sqlite3_file,
}

/// Files whose contents must survive: databases, their WAL and rollback journals.
const TRACKED: c_int = ffi::SQLITE_OPEN_MAIN_DB | ffi::SQLITE_OPEN_WAL | ffi::SQLITE_OPEN_MAIN_JOURNAL;

pub(crate) fn default_vfs() -> Result<*mut ffi::sqlite3_vfs, CrashVfsError> {
    // SAFETY: sqlite3_vfs_find(NULL) only reads SQLite's VFS list (initialising SQLite first).
    let real = unsafe { ffi::sqlite3_vfs_find(std::ptr::null()) };
    if real.is_null() {
        return Err(CrashVfsError::NoRealVfs);
    }
    Ok(real)
}

pub(crate) fn register(name: CString, shared: &'static Shared, text: &str) -> Result<(), CrashVfsError> {
    // SAFETY: looking a name up only reads SQLite's VFS list.
    if !unsafe { ffi::sqlite3_vfs_find(name.as_ptr()) }.is_null() {
        return Err(CrashVfsError::NameTaken(text.to_string()));
    }
    // SAFETY: `shared.real` is SQLite's default VFS, which lives as long as the process.
    let real = unsafe { &*shared.real };
    let vfs = Box::leak(Box::new(ffi::sqlite3_vfs {
        iVersion: 2,
        szOsFile: c_int::try_from(std::mem::size_of::<File>()).unwrap_or(c_int::MAX) + real.szOsFile,
        mxPathname: real.mxPathname,
        pNext: std::ptr::null_mut(),
        zName: name.into_raw(),
        pAppData: shared as *const Shared as *mut c_void,
        xOpen: Some(x_open),
        xDelete: Some(x_delete),
        xAccess: Some(x_access),
        xFullPathname: Some(x_full_pathname),
        xDlOpen: None,
        xDlError: None,
        xDlSym: None,
        xDlClose: None,
        xRandomness: Some(x_randomness),
        xSleep: Some(x_sleep),
        xCurrentTime: Some(x_current_time),
        xGetLastError: Some(x_get_last_error),
        xCurrentTimeInt64: Some(x_current_time_int64),
        xSetSystemCall: None,
        xGetSystemCall: None,
        xNextSystemCall: None,
    }));
    // SAFETY: `vfs` is leaked, so it outlives every connection; it is not made the default.
    let rc = unsafe { ffi::sqlite3_vfs_register(vfs, 0) };
    if rc != ffi::SQLITE_OK {
        return Err(CrashVfsError::Register(rc));
    }
    Ok(())
}

static IO_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    // Version 2: shared memory (WAL) but no memory-mapped I/O, so every page write goes
    // through `xWrite`, where the model sees it.
    iVersion: 2,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: Some(x_shm_map),
    xShmLock: Some(x_shm_lock),
    xShmBarrier: Some(x_shm_barrier),
    xShmUnmap: Some(x_shm_unmap),
    xFetch: None,
    xUnfetch: None,
};

/// # Safety
/// `vfs` is the VFS registered by `register`.
unsafe fn parts(vfs: *mut ffi::sqlite3_vfs) -> (&'static Shared, *mut ffi::sqlite3_vfs) {
    // SAFETY: pAppData was set to a leaked `Shared` in `register`.
    let shared = unsafe { &*((*vfs).pAppData as *const Shared) };
    (shared, shared.real)
}

/// # Safety
/// `file` was opened by `x_open`.
unsafe fn file<'a>(file: *mut ffi::sqlite3_file) -> &'a File {
    // SAFETY: `x_open` laid a `File` at the start of this allocation.
    unsafe { &*(file as *const File) }
}

/// The real file's methods; SQLite sets them at its open, and they are never null after that.
/// # Safety
/// `f.real` is an open file of the real VFS.
unsafe fn real_methods(f: &File) -> &'static ffi::sqlite3_io_methods {
    // SAFETY: an open real file has a non-null, static methods table.
    unsafe { &*(*f.real).pMethods }
}

macro_rules! forward {
    ($f:expr, $method:ident $(, $arg:expr)*) => {{
        // SAFETY: `$f` is an open file of ours, so its real file is open too.
        let methods = unsafe { real_methods($f) };
        match methods.$method {
            // SAFETY: the real VFS's own method, called on its own file with our caller's
            // arguments.
            Some(m) => unsafe { m($f.real $(, $arg)*) },
            None => ffi::SQLITE_OK,
        }
    }};
}

unsafe extern "C" fn x_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    out: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite calls this on our VFS.
    let (shared, real) = unsafe { parts(vfs) };
    let f = out as *mut File;
    // SAFETY: SQLite allocated `szOsFile` bytes at `out`: our header, then the real file.
    let real_file = unsafe { (out as *mut u8).add(std::mem::size_of::<File>()) } as *mut ffi::sqlite3_file;
    // SAFETY: writing our header into memory SQLite gave us; pMethods stays null until the
    // open succeeds, so SQLite will not call xClose on a half-opened file.
    unsafe {
        (*f).base.pMethods = std::ptr::null();
        (*f).shared = shared;
        (*f).path = std::ptr::null_mut();
        (*f).real = real_file;
        (*real_file).pMethods = std::ptr::null();
    }
    let mut state = shared.state();
    if state.cut {
        return ffi::SQLITE_IOERR;
    }
    // SAFETY: the real VFS's xOpen on the memory reserved for its file.
    let rc =
        unsafe { ((*real).xOpen.expect("every VFS has xOpen"))(real, name, real_file, flags, out_flags) };
    if rc != ffi::SQLITE_OK {
        // SAFETY: a real file left with methods after a failed open must still be closed.
        unsafe {
            if !(*real_file).pMethods.is_null() {
                if let Some(close) = (*(*real_file).pMethods).xClose {
                    close(real_file);
                }
            }
        }
        return rc;
    }
    if !name.is_null() && flags & TRACKED != 0 {
        // SAFETY: SQLite passes the full path as a NUL-terminated string.
        let path = PathBuf::from(unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned());
        if state.track(&path, flags & ffi::SQLITE_OPEN_MAIN_DB != 0).is_err() {
            // SAFETY: closing the real file we just opened.
            unsafe { ((*(*real_file).pMethods).xClose.expect("an open file has xClose"))(real_file) };
            return ffi::SQLITE_IOERR;
        }
        // SAFETY: our header, written above.
        unsafe { (*f).path = Box::into_raw(Box::new(path)) };
    }
    state.open += 1;
    // SAFETY: the open succeeded; from now on SQLite calls our methods.
    unsafe { (*f).base.pMethods = &IO_METHODS };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes a file we opened.
    let f = unsafe { self::file(file) };
    let rc = forward!(f, xClose);
    // SAFETY: `shared` was set at open.
    let shared = unsafe { &*f.shared };
    shared.state().open -= 1;
    if !f.path.is_null() {
        // SAFETY: the path was boxed at open and is freed once, here.
        drop(unsafe { Box::from_raw(f.path) });
    }
    rc
}

/// The tracked path of an open file, if any.
fn path(f: &File) -> Option<&PathBuf> {
    // SAFETY: non-null paths are boxed at open and live until close.
    (!f.path.is_null()).then(|| unsafe { &*f.path })
}

unsafe extern "C" fn x_read(file: *mut ffi::sqlite3_file, buf: *mut c_void, n: c_int, off: i64) -> c_int {
    // SAFETY: SQLite reads a file we opened.
    let f = unsafe { self::file(file) };
    // SAFETY: `shared` was set at open.
    if unsafe { &*f.shared }.state().cut {
        return ffi::SQLITE_IOERR_READ;
    }
    forward!(f, xRead, buf, n, off)
}

unsafe extern "C" fn x_write(file: *mut ffi::sqlite3_file, buf: *const c_void, n: c_int, off: i64) -> c_int {
    // SAFETY: SQLite writes a file we opened.
    let f = unsafe { self::file(file) };
    // SAFETY: `shared` was set at open.
    let mut state = unsafe { &*f.shared }.state();
    if !state.tick_write(path(f).map(PathBuf::as_path)) {
        return ffi::SQLITE_IOERR_WRITE;
    }
    let rc = forward!(f, xWrite, buf, n, off);
    if rc == ffi::SQLITE_OK {
        if let Some(path) = path(f) {
            // SAFETY: SQLite hands `n` readable bytes at `buf`.
            let data = unsafe { std::slice::from_raw_parts(buf as *const u8, n.max(0) as usize) };
            state.wrote(path, off.max(0) as usize, data);
        }
    }
    rc
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    // SAFETY: SQLite truncates a file we opened.
    let f = unsafe { self::file(file) };
    // SAFETY: `shared` was set at open.
    let mut state = unsafe { &*f.shared }.state();
    if !state.tick() {
        return ffi::SQLITE_IOERR_TRUNCATE;
    }
    let rc = forward!(f, xTruncate, size);
    if rc == ffi::SQLITE_OK {
        if let Some(path) = path(f) {
            state.truncated(path, size.max(0) as usize);
        }
    }
    rc
}

/// The real file is not synced: only the model's durable image matters, and skipping the real
/// fsync keeps hundreds of power cuts fast.
unsafe extern "C" fn x_sync(file: *mut ffi::sqlite3_file, _flags: c_int) -> c_int {
    // SAFETY: SQLite syncs a file we opened.
    let f = unsafe { self::file(file) };
    // SAFETY: `shared` was set at open.
    let mut state = unsafe { &*f.shared }.state();
    let outcome = match path(f) {
        Some(path) => state.sync(path),
        None if state.tick() => SyncOutcome::Done,
        None => SyncOutcome::PowerOff,
    };
    match outcome {
        SyncOutcome::Done => ffi::SQLITE_OK,
        SyncOutcome::Failed | SyncOutcome::PowerOff => ffi::SQLITE_IOERR_FSYNC,
    }
}

unsafe extern "C" fn x_file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    // SAFETY: SQLite asks about a file we opened.
    let f = unsafe { self::file(file) };
    forward!(f, xFileSize, size)
}

unsafe extern "C" fn x_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: as above.
    let f = unsafe { self::file(file) };
    forward!(f, xLock, level)
}

unsafe extern "C" fn x_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: as above.
    let f = unsafe { self::file(file) };
    forward!(f, xUnlock, level)
}

unsafe extern "C" fn x_check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    // SAFETY: as above.
    let f = unsafe { self::file(file) };
    forward!(f, xCheckReservedLock, out)
}

unsafe extern "C" fn x_file_control(file: *mut ffi::sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    // SAFETY: as above.
    let f = unsafe { self::file(file) };
    forward!(f, xFileControl, op, arg)
}

unsafe extern "C" fn x_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: as above.
    let f = unsafe { self::file(file) };
    forward!(f, xSectorSize)
}

unsafe extern "C" fn x_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: as above.
    let f = unsafe { self::file(file) };
    forward!(f, xDeviceCharacteristics)
}

unsafe extern "C" fn x_shm_map(
    file: *mut ffi::sqlite3_file,
    page: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: as above.
    let f = unsafe { self::file(file) };
    forward!(f, xShmMap, page, size, extend, out)
}

unsafe extern "C" fn x_shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: as above.
    let f = unsafe { self::file(file) };
    forward!(f, xShmLock, offset, n, flags)
}

unsafe extern "C" fn x_shm_barrier(file: *mut ffi::sqlite3_file) {
    // SAFETY: as above.
    let f = unsafe { self::file(file) };
    // SAFETY: an open real file has a static methods table.
    if let Some(m) = unsafe { real_methods(f) }.xShmBarrier {
        // SAFETY: the real VFS's own method on its own file.
        unsafe { m(f.real) }
    }
}

unsafe extern "C" fn x_shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    // SAFETY: as above.
    let f = unsafe { self::file(file) };
    forward!(f, xShmUnmap, delete)
}

unsafe extern "C" fn x_delete(vfs: *mut ffi::sqlite3_vfs, name: *const c_char, sync_dir: c_int) -> c_int {
    // SAFETY: SQLite calls this on our VFS.
    let (shared, real) = unsafe { parts(vfs) };
    let mut state = shared.state();
    if !state.tick() {
        return ffi::SQLITE_IOERR_DELETE;
    }
    // SAFETY: the real VFS's xDelete with SQLite's arguments.
    let rc = unsafe { ((*real).xDelete.expect("every VFS has xDelete"))(real, name, sync_dir) };
    if rc == ffi::SQLITE_OK && !name.is_null() {
        // SAFETY: SQLite passes a NUL-terminated path.
        let path = PathBuf::from(unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned());
        state.deleted(&path);
    }
    rc
}

macro_rules! vfs_forward {
    ($name:ident, $method:ident, ($($arg:ident : $ty:ty),*) -> $ret:ty) => {
        unsafe extern "C" fn $name(vfs: *mut ffi::sqlite3_vfs $(, $arg: $ty)*) -> $ret {
            // SAFETY: SQLite calls this on our VFS.
            let (_, real) = unsafe { parts(vfs) };
            // SAFETY: the real VFS's own method with SQLite's arguments; a default VFS has
            // every version-2 method.
            unsafe { ((*real).$method.expect("the default VFS has it"))(real $(, $arg)*) }
        }
    };
}

vfs_forward!(x_access, xAccess, (name: *const c_char, flags: c_int, out: *mut c_int) -> c_int);
vfs_forward!(x_full_pathname, xFullPathname, (name: *const c_char, n: c_int, out: *mut c_char) -> c_int);
vfs_forward!(x_randomness, xRandomness, (n: c_int, out: *mut c_char) -> c_int);
vfs_forward!(x_sleep, xSleep, (micros: c_int) -> c_int);
vfs_forward!(x_current_time, xCurrentTime, (out: *mut f64) -> c_int);
vfs_forward!(x_get_last_error, xGetLastError, (n: c_int, out: *mut c_char) -> c_int);
vfs_forward!(x_current_time_int64, xCurrentTimeInt64, (out: *mut i64) -> c_int);
