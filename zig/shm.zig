//! Shared memory segments of counters: layout, creation, attachment,
//! validation and growth.
//!
//! A segment is a header followed by `capacity` counters, `stride` bytes apart
//! so that each sits on its own cache line. Anonymous segments live in a memfd
//! (shared with forked children, growable); named segments live in /dev/shm,
//! exactly where shm_open(3) puts them. A named segment appears under its name
//! only once fully initialized: it is built under a temporary name and moved
//! into place with renameat2(RENAME_NOREPLACE), so a process that attaches
//! never sees a half-written header and a create race ends with one segment.
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
/// 16 Mi counters (1 GiB at a 64-byte stride) is far past any scoreboard.
pub const counters_max: u64 = 1 << 24;
pub const page_bytes: u64 = std.heap.page_size_min;
/// POSIX shm names are "/" plus at most NAME_MAX bytes.
pub const name_bytes_max: usize = 255;
const shm_dir = "/dev/shm";
const open_attempts_max: u32 = 16;
const cas_attempts_max: u32 = 1024;
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

pub fn capacityOf(stride: u32, bytes: u64) u64 {
    assert(bytes >= headerBytes(stride));
    return (bytes - headerBytes(stride)) / stride;
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
    if (field.capacity == 0 or field.capacity > counters_max) return status.corrupt;
    if (field.size == 0 or field.size > field.capacity) return status.corrupt;
    if (layoutBytes(field.stride, field.capacity) > file_bytes) return status.truncated;
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

fn fileBytes(fd: i32, file_bytes: *u64, regular: *bool) Status {
    var info: linux.Statx = undefined;
    const rc = linux.statx(fd, "", linux.AT.EMPTY_PATH, .{ .TYPE = true, .SIZE = true }, &info);
    const result = status.fromSyscall(rc);
    if (result != status.ok) return result;
    file_bytes.* = info.size;
    regular.* = (info.mode & linux.S.IFMT) == linux.S.IFREG;
    return status.ok;
}

/// Sizes a fresh file, maps it and writes the header, magic last.
fn initialize(fd: i32, size: u64, segment: *Segment) Status {
    assert(size >= 1 and size <= counters_max);
    const stride = strideDetected();
    const bytes = layoutBytes(stride, size);
    const truncate_status = status.fromSyscall(linux.ftruncate(fd, @intCast(bytes)));
    if (truncate_status != status.ok) return truncate_status;
    const map_status = mapView(fd, stride, capacityOf(stride, bytes), segment);
    if (map_status != status.ok) return map_status;
    const header = segment.header();
    header.layout_version = layout_version;
    header.stride = stride;
    header.capacity = segment.capacity;
    header.size = size;
    header.creator_pid = linux.getpid();
    header.reserved = 0;
    @atomicStore(u64, &header.magic, magic, .release);
    return status.ok;
}

pub fn createAnonymous(size: u64, segment: *Segment) Status {
    if (size == 0 or size > counters_max) return status.fromErrno(.INVAL);
    const rc = linux.memfd_create("raindrops", linux.MFD.CLOEXEC);
    const result = status.fromSyscall(rc);
    if (result != status.ok) return result;
    const fd: i32 = @intCast(rc);
    const initialized = initialize(fd, size, segment);
    if (initialized != status.ok) _ = linux.close(fd);
    return initialized;
}

/// Attaches to the segment called `name`, creating it (with `size` counters
/// and permission `mode`) when `create` is set and it does not exist.
pub fn openNamed(name: []const u8, size: u64, mode: u32, create: bool, segment: *Segment) Status {
    const invalid = status.fromErrno(.INVAL);
    if (!validName(name)) return invalid;
    if (create and (size == 0 or size > counters_max)) return invalid;
    if (mode & ~@as(u32, 0o777) != 0) return invalid;
    var path_buffer: PathBuffer = undefined;
    const path = shmPath(name, &path_buffer);
    var attempt: u32 = 0;
    while (attempt < open_attempts_max) : (attempt += 1) {
        const attached = attach(path, segment);
        if (!create or !status.isErrno(attached, .NOENT)) return attached;
        const created = createExclusive(path, size, mode, segment);
        if (!status.isErrno(created, .EXIST)) return created;
    }
    return status.fromErrno(.AGAIN);
}

fn attach(path: [:0]const u8, segment: *Segment) Status {
    const rc = linux.open(path, .{ .ACCMODE = .RDWR, .NOFOLLOW = true, .CLOEXEC = true }, 0);
    const opened = status.fromSyscall(rc);
    if (opened != status.ok) return opened;
    const fd: i32 = @intCast(rc);
    const attached = attachFd(fd, segment);
    if (attached != status.ok) _ = linux.close(fd);
    return attached;
}

fn attachFd(fd: i32, segment: *Segment) Status {
    var file_bytes: u64 = 0;
    var regular = false;
    const stat_status = fileBytes(fd, &file_bytes, &regular);
    if (stat_status != status.ok) return stat_status;
    if (!regular) return status.not_raindrops;
    var header: Header = undefined;
    const wanted: usize = @intCast(@min(file_bytes, @sizeOf(Header)));
    const rc = linux.pread(fd, std.mem.asBytes(&header), wanted, 0);
    const read_status = status.fromSyscall(rc);
    if (read_status != status.ok) return read_status;
    if (rc != wanted) return status.truncated;
    const valid = validateHeader(std.mem.asBytes(&header)[0..wanted], file_bytes);
    if (valid != status.ok) return valid;
    return mapView(fd, header.stride, header.capacity, segment);
}

/// Maps the header and `capacity` counters of `fd` and describes them in `segment`.
fn mapView(fd: i32, stride: u32, capacity: u64, segment: *Segment) Status {
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
    };
    return status.ok;
}

var temporary_sequence: u32 = 0;

fn createExclusive(path: [:0]const u8, size: u64, mode: u32, segment: *Segment) Status {
    var temporary_buffer: PathBuffer = undefined;
    const sequence = @atomicRmw(u32, &temporary_sequence, .Add, 1, .monotonic);
    const temporary = std.fmt.bufPrintSentinel(&temporary_buffer, shm_dir ++ "/.raindrops-{d}-{d}", .{
        linux.getpid(), sequence,
    }, 0) catch unreachable;
    const rc = linux.open(temporary, .{
        .ACCMODE = .RDWR,
        .CREAT = true,
        .EXCL = true,
        .NOFOLLOW = true,
        .CLOEXEC = true,
    }, mode);
    const opened = status.fromSyscall(rc);
    if (opened != status.ok) return opened;
    const fd: i32 = @intCast(rc);
    var result = initialize(fd, size, segment);
    if (result == status.ok) {
        result = status.fromSyscall(linux.renameat2(
            linux.AT.FDCWD,
            temporary,
            linux.AT.FDCWD,
            path,
            .{ .NOREPLACE = true },
        ));
        if (result != status.ok) _ = unmap(segment.base.?, segment.bytes);
    }
    if (result != status.ok) {
        _ = linux.close(fd);
        _ = linux.unlink(temporary);
    }
    return result;
}

pub fn unlinkNamed(name: []const u8) Status {
    if (!validName(name)) return status.fromErrno(.INVAL);
    var path_buffer: PathBuffer = undefined;
    return status.fromSyscall(linux.unlink(shmPath(name, &path_buffer)));
}

const lock_exclusive: i32 = 2;
const lock_unlock: i32 = 8;

/// Makes the backing file hold at least `capacity_wanted` counters, then maps
/// a view that reaches them. The previous view stays mapped: other threads may
/// still be using it, so the caller unmaps it when the segment is closed.
pub fn reserve(segment: *Segment, capacity_wanted: u64) Status {
    assert(segment.base != null);
    if (capacity_wanted == 0 or capacity_wanted > counters_max) {
        return status.fromErrno(.INVAL);
    }
    const locked = status.fromSyscall(linux.flock(segment.fd, lock_exclusive));
    if (locked != status.ok) return locked;
    const grown = growFile(segment, capacity_wanted);
    _ = linux.flock(segment.fd, lock_unlock);
    if (grown != status.ok) return grown;
    return refresh(segment);
}

fn growFile(segment: *Segment, capacity_wanted: u64) Status {
    const header = segment.header();
    if (@atomicLoad(u64, &header.capacity, .acquire) >= capacity_wanted) return status.ok;
    const bytes = layoutBytes(segment.stride, capacity_wanted);
    var file_bytes: u64 = 0;
    var regular = false;
    const stat_status = fileBytes(segment.fd, &file_bytes, &regular);
    if (stat_status != status.ok) return stat_status;
    if (file_bytes < bytes) {
        const truncated = status.fromSyscall(linux.ftruncate(segment.fd, @intCast(bytes)));
        if (truncated != status.ok) return truncated;
    }
    @atomicStore(u64, &header.capacity, capacityOf(segment.stride, bytes), .release);
    return status.ok;
}

/// Maps a larger view when another process has grown the segment.
pub fn refresh(segment: *Segment) Status {
    const capacity = @atomicLoad(u64, &segment.header().capacity, .acquire);
    if (capacity > counters_max) return status.corrupt;
    if (capacity <= segment.capacity) return status.ok;
    const bytes = layoutBytes(segment.stride, capacity);
    var base: ?[*]u8 = null;
    const map_status = mapShared(segment.fd, bytes, &base);
    if (map_status != status.ok) return map_status;
    segment.base = base;
    segment.bytes = bytes;
    segment.capacity = capacity;
    return status.ok;
}

pub fn sizeOf(segment: *const Segment) u64 {
    return @atomicLoad(u64, &segment.header().size, .acquire);
}

/// Publishes a new logical size; counters dropped by a shrink are zeroed so
/// that growing back starts them fresh.
pub fn setSize(segment: *Segment, size: u64) Status {
    if (size == 0 or size > segment.capacity) return status.fromErrno(.INVAL);
    const header = segment.header();
    var attempt: u32 = 0;
    while (attempt < cas_attempts_max) : (attempt += 1) {
        const size_old = @atomicLoad(u64, &header.size, .acquire);
        if (@cmpxchgStrong(u64, &header.size, size_old, size, .acq_rel, .acquire) == null) {
            zeroRange(segment, size, @min(size_old, segment.capacity));
            return status.ok;
        }
    }
    return status.fromErrno(.AGAIN);
}

fn zeroRange(segment: *Segment, begin: u64, end: u64) void {
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

pub fn close(segment: *Segment) Status {
    assert(segment.base != null);
    const unmapped = unmap(segment.base.?, segment.bytes);
    const closed = status.fromSyscall(linux.close(segment.fd));
    segment.base = null;
    segment.fd = -1;
    return if (unmapped != status.ok) unmapped else closed;
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

test "layout: every counter on its own stride, header padded to one stride" {
    try testing.expectEqual(@as(u64, 64), headerBytes(64));
    try testing.expectEqual(@as(u64, 128), headerBytes(128));
    try testing.expectEqual(@as(u64, 48), headerBytes(16));
    try testing.expectEqual(@as(u64, 4096), layoutBytes(64, 1));
    try testing.expectEqual(@as(u64, 63), capacityOf(64, 4096));
    try testing.expectEqual(@as(u64, 8192), layoutBytes(64, 64));
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

test "validateHeader accepts a good header" {
    const header = headerFixture(63, 10);
    try testing.expectEqual(status.ok, validateHeader(std.mem.asBytes(&header), 4096));
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
        .{ .header = headerFixture(64, 1), .file_bytes = 4096, .expected = status.truncated },
        .{ .header = headerFixture(1000, 1), .file_bytes = 4096, .expected = status.truncated },
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

test "anonymous segment: grow keeps values, shrink zeroes dropped counters" {
    var segment: Segment = undefined;
    try testing.expectEqual(status.ok, createAnonymous(3, &segment));
    defer _ = close(&segment);
    try testing.expectEqual(@as(u64, 3), sizeOf(&segment));
    _ = counters.add(segment.counter(0), 7);
    _ = counters.add(segment.counter(2), 9);
    const base_old = segment.base.?;
    const bytes_old = segment.bytes;
    try testing.expectEqual(status.ok, reserve(&segment, 1000));
    _ = unmap(base_old, bytes_old);
    try testing.expect(segment.capacity >= 1000);
    try testing.expectEqual(status.ok, setSize(&segment, 1000));
    try testing.expectEqual(@as(u64, 7), counters.load(segment.counter(0)));
    try testing.expectEqual(@as(u64, 9), counters.load(segment.counter(2)));
    _ = counters.add(segment.counter(999), 1);
    try testing.expectEqual(status.ok, setSize(&segment, 1));
    try testing.expectEqual(@as(u64, 0), counters.load(segment.counter(2)));
    try testing.expectEqual(@as(u64, 0), counters.load(segment.counter(999)));
    try testing.expectEqual(@as(u64, 7), counters.load(segment.counter(0)));
    try testing.expect(setSize(&segment, 0) < 0);
    try testing.expect(setSize(&segment, segment.capacity + 1) < 0);
}

test "named segment: create, attach, validate, unlink" {
    var name_buffer: [64]u8 = undefined;
    const name = try std.fmt.bufPrint(&name_buffer, "/raindrops-ziptest-{d}", .{linux.getpid()});
    _ = unlinkNamed(name);
    var missing: Segment = undefined;
    try testing.expect(status.isErrno(openNamed(name, 0, 0o600, false, &missing), .NOENT));
    var first: Segment = undefined;
    try testing.expectEqual(status.ok, openNamed(name, 5, 0o600, true, &first));
    defer _ = close(&first);
    defer _ = unlinkNamed(name);
    var second: Segment = undefined;
    try testing.expectEqual(status.ok, openNamed(name, 0, 0, false, &second));
    defer _ = close(&second);
    _ = counters.add(first.counter(4), 11);
    try testing.expectEqual(@as(u64, 11), counters.load(second.counter(4)));
    try testing.expectEqual(@as(u64, 5), sizeOf(&second));
    try testing.expectEqual(status.ok, reserve(&first, 500));
    try testing.expectEqual(status.ok, refresh(&second));
    try testing.expect(second.capacity >= 500);
}

test "named segment: invalid names and a file that is not a segment" {
    var segment: Segment = undefined;
    try testing.expect(openNamed("noslash", 1, 0o600, true, &segment) < 0);
    try testing.expect(openNamed("/a/b", 1, 0o600, true, &segment) < 0);
    try testing.expect(openNamed("/ok", 0, 0o600, true, &segment) < 0);
    try testing.expect(openNamed("/ok", 1, 0o7777, true, &segment) < 0);
    var name_buffer: [64]u8 = undefined;
    const name = try std.fmt.bufPrint(&name_buffer, "/raindrops-zighostile-{d}", .{linux.getpid()});
    var path_buffer: PathBuffer = undefined;
    const path = shmPath(name, &path_buffer);
    const rc = linux.open(path, .{ .ACCMODE = .RDWR, .CREAT = true, .TRUNC = true, .CLOEXEC = true }, 0o600);
    try testing.expectEqual(status.ok, status.fromSyscall(rc));
    defer _ = unlinkNamed(name);
    _ = linux.close(@intCast(rc));
    try testing.expectEqual(status.not_raindrops, openNamed(name, 1, 0o600, true, &segment));
}
