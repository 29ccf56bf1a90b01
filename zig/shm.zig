//! Shared memory segments of counters: layout, creation, attachment,
//! validation and growth.
//!
//! A segment is a header followed by `capacity` counters, `stride` bytes apart
//! so that each sits on its own cache line. Anonymous segments live in a memfd
//! (shared with forked children, growable); named segments live in /dev/shm,
//! exactly where shm_open(3) puts them.
//!
//! Other users are hostile, and nothing read from the file is trusted for
//! addressing:
//! - a named segment appears under its name only once fully initialized: it is
//!   built in an unnamed O_TMPFILE file and linked into place (linkat fails if
//!   the name exists), so no name can be squatted and no half-written header
//!   is ever seen;
//! - attaching refuses a file that is not a regular file, that another user
//!   owns, or that group or others may write;
//! - every size and capacity read from a header is checked against what this
//!   process mapped and against the file's real size before a view is mapped
//!   or a counter is addressed; the file never shrinks, and the pages of its
//!   counters are reserved before they are used and never given back (a full
//!   /dev/shm is ENOSPC at a resize, never SIGBUS at a write).
//! Resizing is serialized by an flock; a view is never unmapped while its
//! owner lives (another thread may be using it), so capacity grows at least
//! geometrically and the number of views stays logarithmic.
const std = @import("std");
const linux = std.os.linux;
const assert = std.debug.assert;
const status = @import("status.zig");
const counters = @import("counters.zig");

const Status = status.Status;

pub const magic: u64 = 0x504f_5244_4e49_4152; // "RAINDROP" in little-endian bytes
pub const layout_version: u32 = 1;
pub const stride_default: u32 = 64;
pub const stride_min: u32 = 16;
pub const stride_max: u32 = 1024;
/// 16 Mi counters (1 GiB at a 64-byte stride) is far past any scoreboard. It
/// bounds sizes and capacities alike: a capacity is clamped to it even where
/// page rounding would leave room for more.
pub const counters_max: u64 = 1 << 24;
pub const page_bytes: u64 = std.heap.page_size_min;
/// POSIX shm names are "/" plus at most NAME_MAX bytes.
pub const name_bytes_max: usize = 255;
/// The permission bits a segment may be created with: the owner's, and read
/// for group and others.
pub const mode_allowed: u32 = 0o744;
/// The owner's read and write: without them the creator could not attach to
/// the segment it creates (except as root), and would leave it behind.
pub const mode_required: u32 = 0o600;
/// Write permission for group or others: such a file is refused at attach.
pub const mode_writable_by_others: u32 = 0o022;
const shm_dir = "/dev/shm";
const open_attempts_max: u32 = 16;
/// Reads of a header that fails validation: the copy of a header that another
/// process is growing may be torn; a hostile header fails every time.
const attach_attempts_max: u32 = 8;
const temporary_attempts_max: u32 = 16;
/// flock attempts, 1 ms apart (about 2 s): anyone who can open the file can
/// hold its lock, so resizing gives up instead of hanging.
const lock_attempts_max: u32 = 2000;
const lock_retry_ns: i64 = 1_000_000;
const line_size_path = "/sys/devices/system/cpu/cpu0/cache/index0/coherency_line_size";

pub const Header = extern struct {
    magic: u64,
    layout_version: u32,
    stride: u32,
    /// Counters the backing file holds; only grows, under flock.
    capacity: u64,
    /// Logical size shared by every process that maps the segment.
    size: u64,
    creator_pid: i32,
    reserved: u32,

    comptime {
        assert(@sizeOf(Header) == 40);
    }
};

/// One process's view of a segment. Filled by the native code, owned by the
/// caller, passed back by pointer on every call that needs it.
pub const Segment = extern struct {
    base: ?[*]u8,
    bytes: u64,
    /// Counters addressable through this view.
    capacity: u64,
    counters_offset: u64,
    stride: u32,
    fd: i32,
    /// The file's owner and permission bits at attach; also filled when the
    /// attach is refused for them, so that the caller can say why.
    owner_uid: u32,
    mode: u32,

    pub fn header(segment: *const Segment) *Header {
        assert(segment.base != null);
        return @ptrCast(@alignCast(segment.base.?));
    }

    pub fn counter(segment: *const Segment, index: u64) *u64 {
        assert(index < segment.capacity);
        const offset = segment.counters_offset + index * segment.stride;
        assert(offset + @sizeOf(u64) <= segment.bytes);
        return @ptrCast(@alignCast(segment.base.? + offset));
    }
};

/// What statx says about a file, as far as attaching cares.
pub const FileInfo = struct {
    bytes: u64,
    regular: bool,
    owner_uid: u32,
    mode: u32,
};

pub fn validStride(stride: u64) bool {
    return stride >= stride_min and stride <= stride_max and std.math.isPowerOfTwo(stride);
}

pub fn headerBytes(stride: u32) u64 {
    assert(validStride(stride));
    return std.mem.alignForward(u64, @sizeOf(Header), stride);
}

pub fn layoutBytes(stride: u32, capacity: u64) u64 {
    assert(capacity <= counters_max);
    return std.mem.alignForward(u64, headerBytes(stride) + capacity * stride, page_bytes);
}

/// Counters a file of `bytes` bytes holds, at most counters_max.
pub fn capacityOf(stride: u32, bytes: u64) u64 {
    if (bytes < headerBytes(stride)) return 0;
    return @min(counters_max, (bytes - headerBytes(stride)) / stride);
}

/// The capacity to grow to for `wanted` counters: at least twice `capacity`,
/// so that growing one counter at a time maps a logarithmic number of views.
pub fn capacityGrown(capacity: u64, wanted: u64) u64 {
    assert(wanted > capacity and wanted <= counters_max);
    return @max(wanted, @min(counters_max, capacity *| 2));
}

/// Parses sysfs' coherency_line_size ("64\n"); null when absent or implausible.
pub fn parseLineSize(bytes: []const u8) ?u32 {
    const digits = std.mem.trimEnd(u8, bytes, " \n");
    const line_size = std.fmt.parseUnsigned(u32, digits, 10) catch return null;
    return if (validStride(line_size)) line_size else null;
}

var stride_cached: u32 = 0;

/// The cache line size of this CPU, read once from sysfs; 64 when unknown.
pub fn strideDetected() u32 {
    const cached = @atomicLoad(u32, &stride_cached, .monotonic);
    if (cached != 0) return cached;
    const detected = readLineSize() orelse stride_default;
    assert(validStride(detected));
    @atomicStore(u32, &stride_cached, detected, .monotonic);
    return detected;
}

fn readLineSize() ?u32 {
    const rc = linux.open(line_size_path, .{ .ACCMODE = .RDONLY, .CLOEXEC = true }, 0);
    if (status.fromSyscall(rc) != status.ok) return null;
    const fd: i32 = @intCast(rc);
    defer _ = linux.close(fd);
    var buffer: [16]u8 = undefined;
    const read_rc = linux.read(fd, &buffer, buffer.len);
    if (status.fromSyscall(read_rc) != status.ok) return null;
    assert(read_rc <= buffer.len);
    return parseLineSize(buffer[0..read_rc]);
}

/// Checks a header read from a file of `file_bytes` bytes before anything maps
/// the counters: a file shorter than its header claims would SIGBUS.
pub fn validateHeader(header_bytes: []const u8, file_bytes: u64) Status {
    assert(header_bytes.len <= @sizeOf(Header));
    assert(header_bytes.len <= file_bytes);
    if (header_bytes.len < @sizeOf(u64)) return status.not_raindrops;
    if (std.mem.readInt(u64, header_bytes[0..8], .little) != magic) return status.not_raindrops;
    if (header_bytes.len < @sizeOf(Header)) return status.truncated;
    const field = std.mem.bytesAsValue(Header, header_bytes[0..@sizeOf(Header)]);
    if (field.layout_version != layout_version) return status.layout_mismatch;
    if (!validStride(field.stride)) return status.corrupt;
    return validateSizes(field.stride, field.capacity, field.size, file_bytes);
}

/// A capacity and size read from a header, against the file's real size.
pub fn validateSizes(stride: u32, capacity: u64, size: u64, file_bytes: u64) Status {
    if (capacity == 0 or capacity > counters_max) return status.corrupt;
    if (size == 0 or size > capacity) return status.corrupt;
    if (capacity > capacityOf(stride, file_bytes)) return status.truncated;
    return status.ok;
}

/// Whether a process of effective uid `euid` may use the file: a regular file
/// of its own that no other user can write. Whatever another user owns is
/// refused as theirs, whatever its kind.
pub fn validateOwner(info: FileInfo, euid: u32) Status {
    if (info.owner_uid != euid) return status.foreign_owner;
    if (!info.regular) return status.not_raindrops;
    if (info.mode & mode_writable_by_others != 0) return status.writable_by_others;
    return status.ok;
}

pub fn validName(name: []const u8) bool {
    if (name.len < 2 or name.len > name_bytes_max + 1) return false;
    if (name[0] != '/') return false;
    const rest = name[1..];
    if (std.mem.findScalar(u8, rest, '/') != null) return false;
    return !std.mem.eql(u8, rest, ".") and !std.mem.eql(u8, rest, "..");
}

pub const PathBuffer = [shm_dir.len + name_bytes_max + 2]u8;
const FdPathBuffer = [32]u8;

/// Reads a NUL-terminated name from the C ABI without scanning past the
/// longest valid name; null when it is longer.
pub fn nameSlice(name: [*:0]const u8) ?[]const u8 {
    var length: usize = 0;
    while (length <= name_bytes_max + 1) : (length += 1) {
        if (name[length] == 0) return name[0..length];
    }
    return null;
}

fn shmPath(name: []const u8, buffer: *PathBuffer) [:0]const u8 {
    assert(validName(name));
    return std.fmt.bufPrintSentinel(buffer, shm_dir ++ "{s}", .{name}, 0) catch unreachable;
}

/// /proc/self/fd/N: a path to the file behind `fd`, whatever its name (or none).
fn fdPath(fd: i32, buffer: *FdPathBuffer) [:0]const u8 {
    assert(fd >= 0);
    return std.fmt.bufPrintSentinel(buffer, "/proc/self/fd/{d}", .{fd}, 0) catch unreachable;
}

fn mapShared(fd: i32, bytes: u64, base: *?[*]u8) Status {
    assert(bytes > 0 and bytes % page_bytes == 0);
    const rc = linux.mmap(null, bytes, .{ .READ = true, .WRITE = true }, .{ .TYPE = .SHARED }, fd, 0);
    const result = status.fromSyscall(rc);
    if (result == status.ok) base.* = @ptrFromInt(rc);
    return result;
}

pub fn unmap(base: [*]u8, bytes: u64) Status {
    assert(bytes > 0);
    return status.fromSyscall(linux.munmap(@alignCast(base), bytes));
}

fn fileInfo(fd: i32, info: *FileInfo) Status {
    return statxInfo(fd, "", linux.AT.EMPTY_PATH, info);
}

/// What the name `path` itself is (a symlink is not followed).
fn pathInfo(path: [:0]const u8, info: *FileInfo) Status {
    return statxInfo(linux.AT.FDCWD, path, linux.AT.SYMLINK_NOFOLLOW, info);
}

fn statxInfo(dirfd: i32, path: [*:0]const u8, flags: u32, info: *FileInfo) Status {
    var buffer: linux.Statx = undefined;
    const mask: linux.STATX = .{ .TYPE = true, .MODE = true, .UID = true, .SIZE = true };
    const result = status.fromSyscall(linux.statx(dirfd, path, flags, mask, &buffer));
    if (result != status.ok) return result;
    const got = buffer.mask;
    if (!(got.TYPE and got.MODE and got.UID and got.SIZE)) return status.fromErrno(.OPNOTSUPP);
    info.* = .{
        .bytes = buffer.size,
        .regular = (buffer.mode & linux.S.IFMT) == linux.S.IFREG,
        .owner_uid = buffer.uid,
        .mode = buffer.mode & 0o7777,
    };
    return status.ok;
}

/// Sizes a fresh, unnamed file and writes its header. Nobody else can see the
/// file before it is fully written: a memfd, or a file linked in afterwards.
fn initialize(fd: i32, stride: u32, size: u64) Status {
    assert(size >= 1 and size <= counters_max);
    const bytes = layoutBytes(stride, size);
    const truncate_status = status.fromSyscall(linux.ftruncate(fd, @intCast(bytes)));
    if (truncate_status != status.ok) return truncate_status;
    const reserved = reservePages(fd, 0, bytes);
    if (reserved != status.ok) return reserved;
    const header: Header = .{
        .magic = magic,
        .layout_version = layout_version,
        .stride = stride,
        .capacity = capacityOf(stride, bytes),
        .size = size,
        .creator_pid = linux.getpid(),
        .reserved = 0,
    };
    const rc = linux.pwrite(fd, std.mem.asBytes(&header), @sizeOf(Header), 0);
    const write_status = status.fromSyscall(rc);
    if (write_status != status.ok) return write_status;
    if (rc != @sizeOf(Header)) return status.fromErrno(.IO);
    return status.ok;
}

pub fn createAnonymous(size: u64, segment: *Segment) Status {
    if (size == 0 or size > counters_max) return status.fromErrno(.INVAL);
    const rc = linux.memfd_create("raindrops", linux.MFD.CLOEXEC);
    const result = status.fromSyscall(rc);
    if (result != status.ok) return result;
    const fd: i32 = @intCast(rc);
    const mapped = createAnonymousFd(fd, size, segment);
    if (mapped != status.ok) _ = linux.close(fd);
    return mapped;
}

fn createAnonymousFd(fd: i32, size: u64, segment: *Segment) Status {
    const stride = strideDetected();
    const initialized = initialize(fd, stride, size);
    if (initialized != status.ok) return initialized;
    var info: FileInfo = undefined;
    const info_status = fileInfo(fd, &info);
    if (info_status != status.ok) return info_status;
    return mapView(fd, stride, capacityOf(stride, layoutBytes(stride, size)), info, segment);
}

/// Attaches to the segment called `name`, creating it (with `size` counters
/// and permission `mode`) when `create` is set and it does not exist. The
/// creator attaches like everyone else, by the name, once the segment is in
/// place: its views show the name (in /proc/PID/maps) and it passes the same
/// checks.
pub fn openNamed(name: []const u8, size: u64, mode: u32, create: bool, segment: *Segment) Status {
    const invalid = status.fromErrno(.INVAL);
    if (!validName(name)) return invalid;
    if (create and (size == 0 or size > counters_max)) return invalid;
    if (mode & ~mode_allowed != 0) return invalid;
    if (create and mode & mode_required != mode_required) return invalid;
    var path_buffer: PathBuffer = undefined;
    const path = shmPath(name, &path_buffer);
    var attempt: u32 = 0;
    while (attempt < open_attempts_max) : (attempt += 1) {
        const attached = attach(path, segment);
        if (!create or !status.isErrno(attached, .NOENT)) return attached;
        const created = createExclusive(path, size, mode);
        if (created != status.ok and !status.isErrno(created, .EXIST)) return created;
    }
    return status.fromErrno(.AGAIN);
}

/// Opens and maps the segment at `path`. O_NONBLOCK: opening a FIFO never waits
/// for a writer; the type check that follows refuses it.
fn attach(path: [:0]const u8, segment: *Segment) Status {
    const rc = linux.open(path, .{ .ACCMODE = .RDWR, .NOFOLLOW = true, .NONBLOCK = true, .CLOEXEC = true }, 0);
    const opened = status.fromSyscall(rc);
    if (opened != status.ok) return openRefused(path, opened, segment);
    const fd: i32 = @intCast(rc);
    const attached = attachFd(fd, segment);
    if (attached != status.ok) _ = linux.close(fd);
    return attached;
}

/// Why opening `path` failed (`opened`), told as attaching tells it where open
/// refuses the kind of file (a symlink: ELOOP, a directory: EISDIR, a socket:
/// ENXIO) or another user's permission bits (EACCES): the name's owner and kind
/// decide, so that the caller hears "another user's" or "not a segment". Only
/// the error depends on this second look at the name; nothing is opened.
fn openRefused(path: [:0]const u8, opened: Status, segment: *Segment) Status {
    assert(opened < 0);
    const kinds = [_]linux.E{ .LOOP, .ISDIR, .NXIO, .ACCES };
    for (kinds) |kind| {
        if (status.isErrno(opened, kind)) break;
    } else return opened;
    var info: FileInfo = undefined;
    if (pathInfo(path, &info) != status.ok) return opened;
    segment.owner_uid = info.owner_uid;
    segment.mode = info.mode;
    const refused = validateOwner(info, linux.geteuid());
    return if (refused == status.ok) opened else refused;
}

/// Validates the file behind `fd` and maps it. A header that fails validation
/// is read again a few times: a process growing the segment writes capacity
/// then size, and one copy of the header may catch the first write only.
fn attachFd(fd: i32, segment: *Segment) Status {
    var result: Status = status.ok;
    var attempt: u32 = 0;
    while (attempt < attach_attempts_max) : (attempt += 1) {
        var header: Header = undefined;
        var info: FileInfo = undefined;
        result = readValidHeader(fd, &header, &info, segment);
        if (result == status.ok) return mapView(fd, header.stride, header.capacity, info, segment);
        if (result != status.truncated and result != status.corrupt) return result;
        _ = linux.sched_yield();
    }
    return result;
}

/// Checks the file's owner and kind (a FIFO cannot be read at an offset, and
/// another user's file is not read at all), reads the header, then the file's
/// size (a growth extends the file before it publishes the new capacity, so
/// this order never sees a capacity the file does not hold yet), and validates
/// both.
fn readValidHeader(fd: i32, header: *Header, info: *FileInfo, segment: *Segment) Status {
    const owner_status = ownedInfo(fd, info, segment);
    if (owner_status != status.ok) return owner_status;
    const rc = linux.pread(fd, std.mem.asBytes(header), @sizeOf(Header), 0);
    const read_status = status.fromSyscall(rc);
    if (read_status != status.ok) return read_status;
    assert(rc <= @sizeOf(Header));
    const size_status = ownedInfo(fd, info, segment);
    if (size_status != status.ok) return size_status;
    const read_bytes: usize = @intCast(@min(rc, info.bytes));
    return validateHeader(std.mem.asBytes(header)[0..read_bytes], info.bytes);
}

/// The file's statx answer, refused unless it is a regular file of this user
/// that no one else can write; the owner and mode go into `segment` either way.
fn ownedInfo(fd: i32, info: *FileInfo, segment: *Segment) Status {
    const info_status = fileInfo(fd, info);
    if (info_status != status.ok) return info_status;
    segment.owner_uid = info.owner_uid;
    segment.mode = info.mode;
    return validateOwner(info.*, linux.geteuid());
}

/// Maps the header and `capacity` counters of `fd` and describes them in `segment`.
fn mapView(fd: i32, stride: u32, capacity: u64, info: FileInfo, segment: *Segment) Status {
    const bytes = layoutBytes(stride, capacity);
    var base: ?[*]u8 = null;
    const map_status = mapShared(fd, bytes, &base);
    if (map_status != status.ok) return map_status;
    segment.* = .{
        .base = base,
        .bytes = bytes,
        .capacity = capacity,
        .counters_offset = headerBytes(stride),
        .stride = stride,
        .fd = fd,
        .owner_uid = info.owner_uid,
        .mode = info.mode,
    };
    return status.ok;
}

/// Creates the segment in an unnamed file and links it in as `path`: EEXIST
/// when the name exists. Where O_TMPFILE or /proc is missing, a randomly named
/// temporary file is renamed into place instead.
fn createExclusive(path: [:0]const u8, size: u64, mode: u32) Status {
    const rc = linux.open(shm_dir, .{
        .ACCMODE = .RDWR,
        .DIRECTORY = true,
        .TMPFILE = true,
        .CLOEXEC = true,
    }, mode);
    const opened = status.fromSyscall(rc);
    if (opened != status.ok) {
        if (status.isErrno(opened, .OPNOTSUPP) or status.isErrno(opened, .ISDIR) or
            status.isErrno(opened, .INVAL)) return createRenamed(path, size, mode);
        return opened;
    }
    const fd: i32 = @intCast(rc);
    defer _ = linux.close(fd);
    const initialized = initialize(fd, strideDetected(), size);
    if (initialized != status.ok) return initialized;
    var fd_path_buffer: FdPathBuffer = undefined;
    const linked = status.fromSyscall(linux.linkat(
        linux.AT.FDCWD,
        fdPath(fd, &fd_path_buffer),
        linux.AT.FDCWD,
        path,
        linux.AT.SYMLINK_FOLLOW,
    ));
    if (status.isErrno(linked, .NOENT)) return createRenamed(path, size, mode);
    return linked;
}

/// The fallback of createExclusive: a temporary name nobody can guess, then
/// renameat2(RENAME_NOREPLACE).
fn createRenamed(path: [:0]const u8, size: u64, mode: u32) Status {
    var temporary_buffer: PathBuffer = undefined;
    var temporary: [:0]const u8 = undefined;
    var fd: i32 = -1;
    var attempt: u32 = 0;
    while (attempt < temporary_attempts_max and fd < 0) : (attempt += 1) {
        var random: u64 = 0;
        const random_rc = linux.getrandom(std.mem.asBytes(&random), @sizeOf(u64), 0);
        const random_status = status.fromSyscall(random_rc);
        if (random_status != status.ok) return random_status;
        temporary = std.fmt.bufPrintSentinel(&temporary_buffer, shm_dir ++ "/.raindrops-{x:0>16}", .{
            random,
        }, 0) catch unreachable;
        const rc = linux.open(temporary, .{
            .ACCMODE = .RDWR,
            .CREAT = true,
            .EXCL = true,
            .NOFOLLOW = true,
            .CLOEXEC = true,
        }, mode);
        const opened = status.fromSyscall(rc);
        if (opened == status.ok) {
            fd = @intCast(rc);
        } else if (!status.isErrno(opened, .EXIST)) {
            return opened;
        }
    }
    if (fd < 0) return status.fromErrno(.AGAIN);
    defer _ = linux.close(fd);
    var result = initialize(fd, strideDetected(), size);
    if (result == status.ok) {
        result = status.fromSyscall(linux.renameat2(
            linux.AT.FDCWD,
            temporary,
            linux.AT.FDCWD,
            path,
            .{ .NOREPLACE = true },
        ));
    }
    if (result != status.ok) _ = linux.unlink(temporary);
    return result;
}

pub fn unlinkNamed(name: []const u8) Status {
    if (!validName(name)) return status.fromErrno(.INVAL);
    var path_buffer: PathBuffer = undefined;
    return status.fromSyscall(linux.unlink(shmPath(name, &path_buffer)));
}

const lock_exclusive_nonblocking: i32 = 2 | 4; // LOCK_EX | LOCK_NB
const lock_unlock: i32 = 8;

/// Takes the segment's resize lock: an flock on an open file description of
/// this call's own, reopened through /proc (a descriptor inherited across fork
/// shares its description, and so its lock, with the parent). Bounded: gives
/// EAGAIN when the lock stays held, since any reader of the file can hold it.
fn lock(segment: *const Segment, lock_fd: *i32) Status {
    assert(segment.fd >= 0);
    var fd_path_buffer: FdPathBuffer = undefined;
    const rc = linux.open(fdPath(segment.fd, &fd_path_buffer), .{
        .ACCMODE = .RDONLY,
        .CLOEXEC = true,
    }, 0);
    lock_fd.* = if (status.fromSyscall(rc) == status.ok) @intCast(rc) else segment.fd;
    var attempt: u32 = 0;
    while (attempt < lock_attempts_max) : (attempt += 1) {
        const locked = status.fromSyscall(linux.flock(lock_fd.*, lock_exclusive_nonblocking));
        if (locked == status.ok) return status.ok;
        if (!status.isErrno(locked, .AGAIN) and !status.isErrno(locked, .INTR)) {
            unlock(segment, lock_fd.*);
            return locked;
        }
        const pause: linux.timespec = .{ .sec = 0, .nsec = lock_retry_ns };
        _ = linux.nanosleep(&pause, null);
    }
    unlock(segment, lock_fd.*);
    return status.fromErrno(.AGAIN);
}

fn unlock(segment: *const Segment, lock_fd: i32) void {
    if (lock_fd == segment.fd) {
        _ = linux.flock(lock_fd, lock_unlock);
    } else {
        _ = linux.close(lock_fd);
    }
}

/// Sets the logical size for every process, growing the file when needed;
/// with `grow_only`, a size at or above `size` is left as it is (attaching
/// never shrinks). Counters between the old and the new size are zeroed, so a
/// counter dropped by a shrink starts at 0 when it comes back, whatever stale
/// views in other processes did meanwhile. May map a new view into `segment`;
/// the previous one stays mapped for other threads: the caller unmaps it.
pub fn resize(segment: *Segment, size: u64, grow_only: bool) Status {
    assert(segment.base != null);
    if (size == 0 or size > counters_max) return status.fromErrno(.INVAL);
    var lock_fd: i32 = -1;
    const locked = lock(segment, &lock_fd);
    if (locked != status.ok) return locked;
    defer unlock(segment, lock_fd);
    return resizeLocked(segment, size, grow_only);
}

fn resizeLocked(segment: *Segment, size: u64, grow_only: bool) Status {
    const header = segment.header();
    var info: FileInfo = undefined;
    const info_status = fileInfo(segment.fd, &info);
    if (info_status != status.ok) return info_status;
    const capacity_header = @atomicLoad(u64, &header.capacity, .acquire);
    const size_old = @atomicLoad(u64, &header.size, .acquire);
    // A bad header is reported, never built upon: the file stays as it is.
    const valid = validateSizes(segment.stride, capacity_header, size_old, info.bytes);
    if (valid != status.ok) return valid;
    if (grow_only and size <= size_old) return status.ok;
    // The file never shrinks, so counters past its end now were never within any size: zero.
    const capacity_used = capacityOf(segment.stride, info.bytes);
    assert(size_old <= capacity_used);
    var capacity_file = capacity_used;
    if (size > capacity_file) {
        const bytes = layoutBytes(segment.stride, capacityGrown(capacity_file, size));
        assert(bytes > info.bytes);
        const truncated = status.fromSyscall(linux.ftruncate(segment.fd, @intCast(bytes)));
        if (truncated != status.ok) return truncated;
        capacity_file = capacityOf(segment.stride, bytes);
    }
    if (capacity_file > capacity_header) {
        @atomicStore(u64, &header.capacity, capacity_file, .release);
    }
    if (capacity_file > segment.capacity) {
        const mapped = remap(segment, capacity_file);
        if (mapped != status.ok) return mapped;
    }
    assert(size <= segment.capacity and size_old <= segment.capacity);
    if (size > size_old) {
        // Pages before zeroes: a store into a page the file does not hold yet allocates it,
        // and a full /dev/shm answers that with SIGBUS instead of an error.
        const reserved = reservePages(
            segment.fd,
            segment.counters_offset + size_old * segment.stride,
            layoutBytes(segment.stride, size),
        );
        if (reserved != status.ok) return reserved;
        storeZeros(segment, size_old, @min(size, capacity_used));
        @atomicStore(u64, &header.size, size, .release);
    } else {
        @atomicStore(u64, &header.size, size, .release);
        storeZeros(segment, size, size_old);
    }
    return status.ok;
}

/// The logical size, mapping a larger view first when another process grew
/// the segment; a negative status when the header holds a size or capacity
/// that this view and the file cannot back.
pub fn sync(segment: *Segment) i64 {
    assert(segment.base != null);
    const size = @atomicLoad(u64, &segment.header().size, .acquire);
    if (size == 0 or size > counters_max) return status.corrupt;
    if (size > segment.capacity) {
        const refreshed = refresh(segment);
        if (refreshed != status.ok) return refreshed;
        if (size > segment.capacity) return status.corrupt;
    }
    return @intCast(size);
}

/// Maps a larger view when the header says the file holds more counters than
/// this view reaches, after checking that the file really does.
pub fn refresh(segment: *Segment) Status {
    const capacity = @atomicLoad(u64, &segment.header().capacity, .acquire);
    if (capacity <= segment.capacity) return status.ok;
    if (capacity > counters_max) return status.corrupt;
    var info: FileInfo = undefined;
    const info_status = fileInfo(segment.fd, &info);
    if (info_status != status.ok) return info_status;
    if (capacity > capacityOf(segment.stride, info.bytes)) return status.truncated;
    return remap(segment, capacity);
}

/// Points `segment` at a new view of `capacity` counters; the old view stays mapped.
fn remap(segment: *Segment, capacity: u64) Status {
    assert(capacity > segment.capacity and capacity <= counters_max);
    const bytes = layoutBytes(segment.stride, capacity);
    var base: ?[*]u8 = null;
    const map_status = mapShared(segment.fd, bytes, &base);
    if (map_status != status.ok) return map_status;
    segment.base = base;
    segment.bytes = bytes;
    segment.capacity = capacity;
    return status.ok;
}

/// Allocates the file's pages in [begin_bytes, end_bytes), page-aligned, so that
/// a full /dev/shm is ENOSPC here instead of SIGBUS at the first write to a
/// counter. A file system without fallocate has nothing to reserve.
fn reservePages(fd: i32, begin_bytes: u64, end_bytes: u64) Status {
    const begin = std.mem.alignBackward(u64, begin_bytes, page_bytes);
    const end = std.mem.alignForward(u64, end_bytes, page_bytes);
    if (begin >= end) return status.ok;
    const rc = linux.fallocate(fd, linux.FALLOC.FL_KEEP_SIZE, @intCast(begin), @intCast(end - begin));
    if (status.isErrno(status.fromSyscall(rc), .OPNOTSUPP)) return status.ok;
    return status.fromSyscall(rc);
}

/// Zeroes counters [begin, end) with stores, whole pages included: punching a
/// hole would be cheaper, but it gives the pages back, another user can take
/// them, and a process still counting through a view of the old size would
/// then die of SIGBUS. Pages once reserved stay with the file.
fn storeZeros(segment: *Segment, begin: u64, end: u64) void {
    assert(end <= segment.capacity);
    var index = begin;
    while (index < end) : (index += 1) counters.store(segment.counter(index), 0);
}

/// Copies the first `count` counters into `values`.
pub fn snapshot(segment: *const Segment, values: [*]u64, count: u64) Status {
    if (count > segment.capacity) return status.fromErrno(.INVAL);
    var index: u64 = 0;
    while (index < count) : (index += 1) values[index] = counters.load(segment.counter(index));
    return status.ok;
}

/// Stores `count` values into the first counters.
pub fn restore(segment: *Segment, values: [*]const u64, count: u64) Status {
    if (count > segment.capacity) return status.fromErrno(.INVAL);
    var index: u64 = 0;
    while (index < count) : (index += 1) counters.store(segment.counter(index), values[index]);
    return status.ok;
}

/// Closes the segment's file descriptor. The views stay mapped: the caller
/// unmaps them once no thread can be using them.
pub fn closeFile(segment: *Segment) Status {
    if (segment.fd < 0) return status.fromErrno(.BADF);
    const closed = status.fromSyscall(linux.close(segment.fd));
    segment.fd = -1;
    return closed;
}

const testing = std.testing;

fn headerFixture(capacity: u64, size: u64) Header {
    return .{
        .magic = magic,
        .layout_version = layout_version,
        .stride = 64,
        .capacity = capacity,
        .size = size,
        .creator_pid = 1,
        .reserved = 0,
    };
}

/// Unmaps the view of `segment` and closes its file, for tests that own every view.
fn release(segment: *Segment) void {
    _ = unmap(segment.base.?, segment.bytes);
    _ = closeFile(segment);
}

test "layout: every counter on its own stride, header padded to one stride" {
    try testing.expectEqual(@as(u64, 64), headerBytes(64));
    try testing.expectEqual(@as(u64, 128), headerBytes(128));
    try testing.expectEqual(@as(u64, 48), headerBytes(16));
    try testing.expectEqual(@as(u64, 4096), layoutBytes(64, 1));
    try testing.expectEqual(@as(u64, 63), capacityOf(64, 4096));
    try testing.expectEqual(@as(u64, 8192), layoutBytes(64, 64));
}

test "capacityOf: never more than counters_max, 0 for a file shorter than a header" {
    try testing.expectEqual(@as(u64, 0), capacityOf(64, 0));
    try testing.expectEqual(@as(u64, 0), capacityOf(64, 63));
    try testing.expectEqual(@as(u64, 0), capacityOf(64, 127));
    try testing.expectEqual(@as(u64, 1), capacityOf(64, 128));
    try testing.expectEqual(counters_max, capacityOf(64, layoutBytes(64, counters_max)));
    try testing.expectEqual(counters_max, capacityOf(16, 1 << 60));
    try testing.expectEqual(counters_max, capacityOf(1024, layoutBytes(1024, counters_max)));
}

test "capacityGrown at least doubles, up to counters_max" {
    try testing.expectEqual(@as(u64, 126), capacityGrown(63, 64));
    try testing.expectEqual(@as(u64, 1000), capacityGrown(63, 1000));
    try testing.expectEqual(@as(u64, 1), capacityGrown(0, 1));
    try testing.expectEqual(counters_max, capacityGrown(counters_max - 1, counters_max));
    try testing.expectEqual(counters_max, capacityGrown(counters_max / 2 + 1, counters_max / 2 + 2));
    var capacity: u64 = 63;
    var growths: u32 = 0;
    var size: u64 = 1;
    while (size < 1 << 20) : (size += 1) {
        if (size > capacity) {
            capacity = capacityOf(64, layoutBytes(64, capacityGrown(capacity, size)));
            growths += 1;
        }
    }
    try testing.expect(growths <= 15);
}

test "parseLineSize accepts sysfs text and rejects implausible sizes" {
    try testing.expectEqual(@as(?u32, 64), parseLineSize("64\n"));
    try testing.expectEqual(@as(?u32, 128), parseLineSize("128"));
    try testing.expectEqual(@as(?u32, null), parseLineSize(""));
    try testing.expectEqual(@as(?u32, null), parseLineSize("0\n"));
    try testing.expectEqual(@as(?u32, null), parseLineSize("48\n"));
    try testing.expectEqual(@as(?u32, null), parseLineSize("8\n"));
    try testing.expectEqual(@as(?u32, null), parseLineSize("4096\n"));
    try testing.expectEqual(@as(?u32, null), parseLineSize("x64"));
    try testing.expectEqual(@as(?u32, null), parseLineSize("99999999999"));
}

test "validName follows shm_open rules" {
    try testing.expect(validName("/a"));
    try testing.expect(validName("/raindrops.app-1"));
    try testing.expect(!validName(""));
    try testing.expect(!validName("/"));
    try testing.expect(!validName("a"));
    try testing.expect(!validName("/a/b"));
    try testing.expect(!validName("/."));
    try testing.expect(!validName("/.."));
    var longest: [name_bytes_max + 2]u8 = @splat('x');
    longest[0] = '/';
    try testing.expect(validName(longest[0 .. name_bytes_max + 1]));
    try testing.expect(!validName(&longest));
}

test "nameSlice stops at the longest valid name" {
    try testing.expectEqualStrings("/abc", nameSlice("/abc").?);
    var too_long: [name_bytes_max + 3]u8 = @splat('x');
    too_long[0] = '/';
    too_long[name_bytes_max + 2] = 0;
    try testing.expectEqual(@as(?[]const u8, null), nameSlice(too_long[0 .. name_bytes_max + 2 :0]));
}

test "validateHeader accepts a good header, the largest one too" {
    const header = headerFixture(63, 10);
    try testing.expectEqual(status.ok, validateHeader(std.mem.asBytes(&header), 4096));
    const largest = headerFixture(counters_max, counters_max);
    const largest_bytes = layoutBytes(64, counters_max);
    try testing.expectEqual(status.ok, validateHeader(std.mem.asBytes(&largest), largest_bytes));
}

test "validateHeader rejects hostile headers" {
    const Case = struct { header: Header, file_bytes: u64, expected: Status };
    var wrong_magic = headerFixture(63, 1);
    wrong_magic.magic = 0x1234;
    var wrong_version = headerFixture(63, 1);
    wrong_version.layout_version = 2;
    var odd_stride = headerFixture(63, 1);
    odd_stride.stride = 48;
    var huge_stride = headerFixture(63, 1);
    huge_stride.stride = 1 << 20;
    const cases = [_]Case{
        .{ .header = wrong_magic, .file_bytes = 4096, .expected = status.not_raindrops },
        .{ .header = wrong_version, .file_bytes = 4096, .expected = status.layout_mismatch },
        .{ .header = odd_stride, .file_bytes = 4096, .expected = status.corrupt },
        .{ .header = huge_stride, .file_bytes = 4096, .expected = status.corrupt },
        .{ .header = headerFixture(0, 0), .file_bytes = 4096, .expected = status.corrupt },
        .{ .header = headerFixture(63, 0), .file_bytes = 4096, .expected = status.corrupt },
        .{ .header = headerFixture(63, 64), .file_bytes = 4096, .expected = status.corrupt },
        .{ .header = headerFixture(counters_max + 1, 1), .file_bytes = 1 << 40, .expected = status.corrupt },
        .{ .header = headerFixture(counters_max + 63, 1), .file_bytes = 1 << 40, .expected = status.corrupt },
        .{ .header = headerFixture(1 << 60, 1 << 40), .file_bytes = 4096, .expected = status.corrupt },
        .{ .header = headerFixture(64, 1), .file_bytes = 4096, .expected = status.truncated },
        .{ .header = headerFixture(1000, 1), .file_bytes = 4096, .expected = status.truncated },
        .{ .header = headerFixture(1000, 1000), .file_bytes = 4096, .expected = status.truncated },
    };
    for (cases) |case| {
        try testing.expectEqual(case.expected, validateHeader(std.mem.asBytes(&case.header), case.file_bytes));
    }
}

test "validateHeader on short files" {
    const header = headerFixture(63, 1);
    const bytes = std.mem.asBytes(&header);
    try testing.expectEqual(status.not_raindrops, validateHeader(bytes[0..0], 0));
    try testing.expectEqual(status.not_raindrops, validateHeader(bytes[0..7], 7));
    try testing.expectEqual(status.truncated, validateHeader(bytes[0..8], 8));
    try testing.expectEqual(status.truncated, validateHeader(bytes[0..39], 39));
    try testing.expectEqual(status.truncated, validateHeader(bytes, 40));
}

test "validateOwner: a regular file of this user that nobody else can write" {
    const mine: FileInfo = .{ .bytes = 4096, .regular = true, .owner_uid = 1000, .mode = 0o600 };
    try testing.expectEqual(status.ok, validateOwner(mine, 1000));
    var readable = mine;
    readable.mode = 0o644;
    try testing.expectEqual(status.ok, validateOwner(readable, 1000));
    try testing.expectEqual(status.foreign_owner, validateOwner(mine, 0));
    try testing.expectEqual(status.foreign_owner, validateOwner(mine, 65534));
    for ([_]u32{ 0o666, 0o620, 0o602, 0o622, 0o660, 0o606, 0o4622 }) |mode| {
        var writable = mine;
        writable.mode = mode;
        try testing.expectEqual(status.writable_by_others, validateOwner(writable, 1000));
    }
    var directory = mine;
    directory.regular = false;
    try testing.expectEqual(status.not_raindrops, validateOwner(directory, 1000));
    directory.mode = 0o777;
    try testing.expectEqual(status.not_raindrops, validateOwner(directory, 1000));
    try testing.expectEqual(status.foreign_owner, validateOwner(directory, 65534));
}

test "anonymous segment: grow keeps values, shrink and regrow start counters at 0" {
    var segment: Segment = undefined;
    try testing.expectEqual(status.ok, createAnonymous(3, &segment));
    defer release(&segment);
    try testing.expectEqual(@as(i64, 3), sync(&segment));
    _ = counters.add(segment.counter(0), 7);
    _ = counters.add(segment.counter(2), 9);
    const base_old = segment.base.?;
    const bytes_old = segment.bytes;
    try testing.expectEqual(status.ok, resize(&segment, 1000, false));
    _ = unmap(base_old, bytes_old);
    try testing.expect(segment.capacity >= 1000);
    try testing.expectEqual(@as(i64, 1000), sync(&segment));
    try testing.expectEqual(@as(u64, 7), counters.load(segment.counter(0)));
    try testing.expectEqual(@as(u64, 9), counters.load(segment.counter(2)));
    _ = counters.add(segment.counter(999), 1);
    _ = counters.add(segment.counter(500), 1);
    try testing.expectEqual(status.ok, resize(&segment, 1, false));
    try testing.expectEqual(@as(u64, 0), counters.load(segment.counter(2)));
    try testing.expectEqual(@as(u64, 0), counters.load(segment.counter(999)));
    try testing.expectEqual(@as(u64, 7), counters.load(segment.counter(0)));
    // A stale view keeps counting past the size; growing back zeroes it again.
    _ = counters.add(segment.counter(500), 5);
    _ = counters.add(segment.counter(2), 5);
    try testing.expectEqual(status.ok, resize(&segment, 1000, false));
    try testing.expectEqual(@as(u64, 0), counters.load(segment.counter(500)));
    try testing.expectEqual(@as(u64, 0), counters.load(segment.counter(2)));
    try testing.expect(resize(&segment, 0, false) < 0);
    try testing.expect(resize(&segment, counters_max + 1, false) < 0);
}

/// Bytes of memory the file holds (statx blocks are 512 bytes).
fn allocatedBytes(fd: i32) !u64 {
    var buffer: linux.Statx = undefined;
    const rc = linux.statx(fd, "", linux.AT.EMPTY_PATH, .{ .BLOCKS = true }, &buffer);
    try testing.expectEqual(status.ok, status.fromSyscall(rc));
    return buffer.blocks * 512;
}

test "a shrink gives no page back: another user could take it from a stale view" {
    var segment: Segment = undefined;
    try testing.expectEqual(status.ok, createAnonymous(1000, &segment));
    defer release(&segment);
    const reserved = try allocatedBytes(segment.fd);
    try testing.expect(reserved >= layoutBytes(segment.stride, 1000));
    _ = counters.add(segment.counter(999), 3);
    try testing.expectEqual(status.ok, resize(&segment, 1, false));
    try testing.expectEqual(reserved, try allocatedBytes(segment.fd));
    try testing.expectEqual(@as(u64, 0), counters.load(segment.counter(999)));
}

test "resize with grow_only never shrinks" {
    var segment: Segment = undefined;
    try testing.expectEqual(status.ok, createAnonymous(50, &segment));
    defer release(&segment);
    _ = counters.add(segment.counter(40), 3);
    try testing.expectEqual(status.ok, resize(&segment, 10, true));
    try testing.expectEqual(@as(i64, 50), sync(&segment));
    try testing.expectEqual(@as(u64, 3), counters.load(segment.counter(40)));
    try testing.expectEqual(status.ok, resize(&segment, 60, true));
    try testing.expectEqual(@as(i64, 60), sync(&segment));
}

test "growing one counter at a time maps a logarithmic number of views" {
    var segment: Segment = undefined;
    try testing.expectEqual(status.ok, createAnonymous(1, &segment));
    var views: u32 = 0;
    var size: u64 = 2;
    while (size <= 20_000) : (size += 1) {
        const base_old = segment.base.?;
        const bytes_old = segment.bytes;
        try testing.expectEqual(status.ok, resize(&segment, size, false));
        if (segment.base.? != base_old) {
            _ = unmap(base_old, bytes_old);
            views += 1;
        }
    }
    release(&segment);
    try testing.expect(views <= 10);
}

test "sync bounds a poisoned header by the view and the file" {
    var segment: Segment = undefined;
    try testing.expectEqual(status.ok, createAnonymous(3, &segment));
    defer release(&segment);
    const header = segment.header();
    header.size = 1000;
    try testing.expectEqual(@as(i64, status.corrupt), sync(&segment));
    header.size = 0;
    try testing.expectEqual(@as(i64, status.corrupt), sync(&segment));
    header.size = 100_000;
    header.capacity = 100_000;
    try testing.expectEqual(@as(i64, status.truncated), sync(&segment));
    header.capacity = 1 << 60;
    try testing.expectEqual(@as(i64, status.corrupt), sync(&segment));
    try testing.expectEqual(status.corrupt, resize(&segment, 5, false));
    try testing.expectEqual(@as(u64, 63), segment.capacity);
    header.size = 3;
    header.capacity = 63;
    try testing.expectEqual(@as(i64, 3), sync(&segment));
}

test "named segment: create, attach, validate, unlink" {
    var name_buffer: [64]u8 = undefined;
    const name = try std.fmt.bufPrint(&name_buffer, "/raindrops-ziptest-{d}", .{linux.getpid()});
    _ = unlinkNamed(name);
    var missing: Segment = undefined;
    try testing.expect(status.isErrno(openNamed(name, 0, 0, false, &missing), .NOENT));
    var first: Segment = undefined;
    try testing.expectEqual(status.ok, openNamed(name, 5, 0o600, true, &first));
    defer release(&first);
    defer _ = unlinkNamed(name);
    try testing.expectEqual(linux.geteuid(), first.owner_uid);
    var second: Segment = undefined;
    try testing.expectEqual(status.ok, openNamed(name, 0, 0, false, &second));
    defer release(&second);
    _ = counters.add(first.counter(4), 11);
    try testing.expectEqual(@as(u64, 11), counters.load(second.counter(4)));
    try testing.expectEqual(@as(i64, 5), sync(&second));
    const base_old = first.base.?;
    const bytes_old = first.bytes;
    try testing.expectEqual(status.ok, resize(&first, 500, false));
    _ = unmap(base_old, bytes_old);
    const second_base_old = second.base.?;
    const second_bytes_old = second.bytes;
    try testing.expectEqual(@as(i64, 500), sync(&second));
    _ = unmap(second_base_old, second_bytes_old);
    try testing.expect(second.capacity >= 500);
    var third: Segment = undefined;
    try testing.expectEqual(status.ok, openNamed(name, 1, 0o600, false, &third));
    try testing.expectEqual(@as(i64, 500), sync(&third));
    release(&third);
}

test "named segment: the fallback without O_TMPFILE creates it atomically too" {
    var name_buffer: [64]u8 = undefined;
    const name = try std.fmt.bufPrint(&name_buffer, "/raindrops-zigrenamed-{d}", .{linux.getpid()});
    var path_buffer: PathBuffer = undefined;
    const path = shmPath(name, &path_buffer);
    _ = unlinkNamed(name);
    try testing.expectEqual(status.ok, createRenamed(path, 7, 0o600));
    defer _ = unlinkNamed(name);
    try testing.expect(status.isErrno(createRenamed(path, 7, 0o600), .EXIST));
    try testing.expect(status.isErrno(createExclusive(path, 7, 0o600), .EXIST));
    var segment: Segment = undefined;
    try testing.expectEqual(status.ok, openNamed(name, 0, 0, false, &segment));
    defer release(&segment);
    try testing.expectEqual(@as(i64, 7), sync(&segment));
}

test "named segment: invalid names, modes and a file that is not a segment" {
    var segment: Segment = undefined;
    try testing.expect(openNamed("noslash", 1, 0o600, true, &segment) < 0);
    try testing.expect(openNamed("/a/b", 1, 0o600, true, &segment) < 0);
    try testing.expect(openNamed("/ok", 0, 0o600, true, &segment) < 0);
    try testing.expect(openNamed("/ok", 1, 0o7777, true, &segment) < 0);
    try testing.expect(openNamed("/ok", 1, 0o666, true, &segment) < 0);
    try testing.expect(openNamed("/ok", 1, 0o620, true, &segment) < 0);
    for ([_]u32{ 0o400, 0o200, 0o100, 0, 0o444, 0o500 }) |mode| {
        try testing.expect(status.isErrno(openNamed("/ok", 1, mode, true, &segment), .INVAL));
    }
    var name_buffer: [64]u8 = undefined;
    const name = try std.fmt.bufPrint(&name_buffer, "/raindrops-zighostile-{d}", .{linux.getpid()});
    var path_buffer: PathBuffer = undefined;
    const path = shmPath(name, &path_buffer);
    const rc = linux.open(path, .{ .ACCMODE = .RDWR, .CREAT = true, .TRUNC = true, .CLOEXEC = true }, 0o600);
    try testing.expectEqual(status.ok, status.fromSyscall(rc));
    defer _ = unlinkNamed(name);
    const fd: i32 = @intCast(rc);
    try testing.expectEqual(status.not_raindrops, openNamed(name, 1, 0o600, true, &segment));
    _ = linux.fchmod(fd, 0o666);
    try testing.expectEqual(status.writable_by_others, openNamed(name, 1, 0o600, true, &segment));
    try testing.expectEqual(@as(u32, 0o666), segment.mode);
    _ = linux.close(fd);
}

test "named segment: a name that is not a regular file is not a segment, and never blocks" {
    var name_buffer: [64]u8 = undefined;
    const name = try std.fmt.bufPrint(&name_buffer, "/raindrops-zigkinds-{d}", .{linux.getpid()});
    var path_buffer: PathBuffer = undefined;
    const path = shmPath(name, &path_buffer);
    _ = unlinkNamed(name);
    const Kind = enum { fifo, directory, symlink };
    for ([_]Kind{ .fifo, .directory, .symlink }) |kind| {
        const rc = switch (kind) {
            .fifo => linux.mknod(path, linux.S.IFIFO | 0o600, 0),
            .directory => linux.mkdir(path, 0o700),
            .symlink => linux.symlink("/dev/null", path),
        };
        try testing.expectEqual(status.ok, status.fromSyscall(rc));
        var segment: Segment = undefined;
        try testing.expectEqual(status.not_raindrops, openNamed(name, 0, 0, false, &segment));
        try testing.expectEqual(status.not_raindrops, openNamed(name, 1, 0o600, true, &segment));
        try testing.expectEqual(linux.geteuid(), segment.owner_uid);
        const removed = if (kind == .directory) linux.rmdir(path) else linux.unlink(path);
        try testing.expectEqual(status.ok, status.fromSyscall(removed));
    }
}
