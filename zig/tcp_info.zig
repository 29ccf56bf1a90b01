//! getsockopt(TCP_INFO): the kernel's struct tcp_info, copied as bytes.
//! Python decodes the fields (raindrops/tcp_info.py) up to the length the
//! kernel wrote, so a newer kernel with a longer struct needs no change here.
//!
//! And a listener's accept queue without a scan of the socket table: for a
//! LISTEN socket, tcp_get_info reports the queue length (sk_ack_backlog, the
//! number inet_diag reports as idiag_rqueue) in tcpi_unacked and the backlog
//! in tcpi_sacked (Linux >= 2.6.24).
const std = @import("std");
const linux = std.os.linux;
const assert = std.debug.assert;
const native_endian = @import("builtin").cpu.arch.endian();
const status = @import("status.zig");

const Status = status.Status;

/// Kernel 6.18's struct tcp_info is 280 bytes; leave room for growth.
pub const buffer_bytes: u32 = 512;

/// Reads TCP_INFO of `fd` into `buffer`; sets `length` to the bytes written.
pub fn read(fd: i32, buffer: []u8, length: *u32) Status {
    length.* = 0;
    if (fd < 0) return status.fromErrno(.BADF);
    if (buffer.len == 0) return status.fromErrno(.INVAL);
    var written: linux.socklen_t = @intCast(@min(buffer.len, std.math.maxInt(u32)));
    const rc = linux.getsockopt(fd, linux.IPPROTO.TCP, linux.TCP.INFO, buffer.ptr, &written);
    const got = status.fromSyscall(rc);
    if (got != status.ok) return got;
    if (written > buffer.len) return status.fromErrno(.MSGSIZE);
    length.* = written;
    return status.ok;
}

const af_inet: u16 = linux.AF.INET;
const af_inet6: u16 = linux.AF.INET6;
const state_listen: u8 = 10;
const state_offset: u32 = 0;
/// tcpi_unacked and tcpi_sacked, after eight u8 fields and four u32 ones.
const unacked_offset: u32 = 24;
const sacked_offset: u32 = 28;

/// What the caller needs to trust a listener's own accept-queue length: which
/// address it listens on, and whether another socket may listen there too.
/// Mirrored by `TcpListener` in raindrops/_native.py.
pub const Listener = extern struct {
    /// Network byte order; an IPv4 address fills the first 4 bytes, the rest zero.
    address: [16]u8,
    family: u16,
    /// Host byte order.
    port: u16,
    /// 1 when the socket is a TCP socket in LISTEN; the fields below are set only then.
    listening: u8,
    /// SO_REUSEPORT: other sockets may listen on the same address and port.
    reuseport: u8,
    /// SO_BINDTODEVICE: sockets bound to other devices may listen on the same address and port.
    device_bound: u8,
    /// IPV6_V6ONLY of an AF_INET6 socket (0 for AF_INET).
    v6only: u8,
    /// 1 when TCP_INFO gave `queued` and `backlog` (qemu-user answers it with 4 bytes).
    queue_known: u8,
    reserved: [3]u8,
    /// tcpi_unacked: connections in the accept queue.
    queued: u32,
    /// tcpi_sacked: the backlog given to listen(2).
    backlog: u32,

    comptime {
        assert(@sizeOf(Listener) == 36);
    }
};

/// A listener's queue as struct tcp_info reports it.
pub const Queue = struct { queued: u32, backlog: u32 };

/// The accept queue in a TCP_INFO reply; null when the socket is not in
/// LISTEN (the fields mean segments then) or the reply is too short.
pub fn parseQueue(info: []const u8) ?Queue {
    if (info.len < sacked_offset + 4) return null;
    if (info[state_offset] != state_listen) return null;
    return .{
        .queued = std.mem.readInt(u32, info[unacked_offset..][0..4], native_endian),
        .backlog = std.mem.readInt(u32, info[sacked_offset..][0..4], native_endian),
    };
}

pub const Address = struct { family: u16, address: [16]u8, port: u16 };

/// The family, address and port of a getsockname() reply; null for another
/// family or a reply too short for its family's struct.
pub fn parseAddress(name: []const u8) ?Address {
    if (name.len < 4) return null;
    const family = std.mem.readInt(u16, name[0..2], native_endian);
    var found: Address = .{ .family = family, .address = @splat(0), .port = std.mem.readInt(u16, name[2..4], .big) };
    switch (family) {
        af_inet => {
            if (name.len < @sizeOf(linux.sockaddr.in)) return null;
            found.address[0..4].* = name[4..8].*;
        },
        af_inet6 => {
            if (name.len < @sizeOf(linux.sockaddr.in6)) return null;
            found.address = name[8..24].*;
        },
        else => return null,
    }
    return found;
}

/// Fills `listener` for `fd`: `listening` 0 when it is not a TCP socket in
/// LISTEN. -errno when the descriptor is not an open socket.
pub fn readListener(fd: i32, listener: *Listener) Status {
    listener.* = std.mem.zeroes(Listener);
    if (fd < 0) return status.fromErrno(.BADF);
    var accepting: i32 = 0;
    const got = readIntOption(fd, linux.SOL.SOCKET, linux.SO.ACCEPTCONN, &accepting);
    if (got != status.ok) return got;
    if (accepting == 0) return status.ok;
    // A unix listener, or MPTCP (whose TCP_INFO is a subflow's): not a TCP listener.
    const protocol = readOption(fd, linux.SOL.SOCKET, linux.SO.PROTOCOL) orelse return status.ok;
    if (protocol != linux.IPPROTO.TCP) return status.ok;
    var name: linux.sockaddr.storage = undefined;
    var name_bytes: linux.socklen_t = @sizeOf(linux.sockaddr.storage);
    const named = status.fromSyscall(linux.getsockname(fd, @ptrCast(&name), &name_bytes));
    if (named != status.ok) return named;
    const bytes = std.mem.asBytes(&name)[0..@min(name_bytes, @sizeOf(linux.sockaddr.storage))];
    const address = parseAddress(bytes) orelse return status.ok;
    listener.address = address.address;
    listener.family = address.family;
    listener.port = address.port;
    listener.reuseport = @intFromBool((readOption(fd, linux.SOL.SOCKET, linux.SO.REUSEPORT) orelse 1) != 0);
    listener.device_bound = @intFromBool(deviceBound(fd));
    if (address.family == af_inet6) {
        listener.v6only = @intFromBool((readOption(fd, linux.IPPROTO.IPV6, linux.IPV6.V6ONLY) orelse 1) != 0);
    }
    listener.listening = 1;
    var info: [buffer_bytes]u8 align(8) = undefined;
    var length: u32 = 0;
    if (read(fd, &info, &length) != status.ok) return status.ok;
    assert(length <= info.len);
    // Null when the socket stopped listening since SO_ACCEPTCONN: the queue is not known.
    const queue = parseQueue(info[0..length]) orelse return status.ok;
    listener.queued = queue.queued;
    listener.backlog = queue.backlog;
    listener.queue_known = 1;
    return status.ok;
}

fn readIntOption(fd: i32, level: i32, option: u32, value: *i32) Status {
    var value_bytes: linux.socklen_t = @sizeOf(i32);
    const got = status.fromSyscall(linux.getsockopt(fd, level, option, std.mem.asBytes(value), &value_bytes));
    if (got != status.ok) return got;
    if (value_bytes != @sizeOf(i32)) return status.fromErrno(.INVAL);
    return status.ok;
}

/// An int socket option; null when it cannot be read.
fn readOption(fd: i32, level: i32, option: u32) ?i32 {
    var value: i32 = 0;
    if (readIntOption(fd, level, option, &value) != status.ok) return null;
    return value;
}

/// SO_BINDTODEVICE names the device, or nothing when the socket is not bound to one.
/// A failure to tell counts as bound: the caller then does not rely on the socket alone.
fn deviceBound(fd: i32) bool {
    var device: [linux.IFNAMESIZE]u8 = undefined;
    var device_bytes: linux.socklen_t = device.len;
    const rc = linux.getsockopt(fd, linux.SOL.SOCKET, linux.SO.BINDTODEVICE, &device, &device_bytes);
    if (status.fromSyscall(rc) != status.ok) return true;
    return device_bytes != 0 and device[0] != 0;
}

/// The most descriptors one call checks (raindrops/linux.py scans at most this many).
pub const descriptors_max: u32 = 65536;

/// Sets listening[i] to 1 when fds[i] is a listening socket (SO_ACCEPTCONN), else 0: one
/// system call per descriptor, so that a process holding thousands of connections finds its
/// few listeners without wrapping each descriptor in a Python socket.
pub fn markListening(fds: []const i32, listening: []u8) void {
    assert(fds.len == listening.len);
    assert(fds.len <= descriptors_max);
    for (fds, listening) |fd, *mark| {
        var accepting: i32 = 0;
        const got = if (fd < 0) status.fromErrno(.BADF) else readIntOption(fd, linux.SOL.SOCKET, linux.SO.ACCEPTCONN, &accepting);
        mark.* = @intFromBool(got == status.ok and accepting != 0);
    }
}

test "read: a bad fd is -EBADF, a non-socket is -ENOTSOCK" {
    var buffer: [buffer_bytes]u8 = undefined;
    var length: u32 = 1;
    try std.testing.expectEqual(@as(Status, -9), read(-1, &buffer, &length));
    try std.testing.expectEqual(@as(u32, 0), length);
    const pipe_fds = blk: {
        var fds: [2]i32 = undefined;
        assert(status.fromSyscall(linux.pipe(&fds)) == status.ok);
        break :blk fds;
    };
    defer _ = linux.close(pipe_fds[0]);
    defer _ = linux.close(pipe_fds[1]);
    try std.testing.expectEqual(status.fromErrno(.NOTSOCK), read(pipe_fds[0], &buffer, &length));
    var listener: Listener = undefined;
    try std.testing.expectEqual(status.fromErrno(.NOTSOCK), readListener(pipe_fds[0], &listener));
    try std.testing.expectEqual(@as(u8, 0), listener.listening);
    try std.testing.expectEqual(status.fromErrno(.BADF), readListener(-1, &listener));
}

test "readListener: a loopback listener and a socket that is not listening" {
    const fd_rc = linux.socket(linux.AF.INET, linux.SOCK.STREAM | linux.SOCK.CLOEXEC, 0);
    try std.testing.expectEqual(status.ok, status.fromSyscall(fd_rc));
    const fd: i32 = @intCast(fd_rc);
    defer _ = linux.close(fd);
    var listener: Listener = undefined;
    try std.testing.expectEqual(status.ok, readListener(fd, &listener));
    try std.testing.expectEqual(@as(u8, 0), listener.listening);
    var loopback: linux.sockaddr.in = .{ .port = 0, .addr = undefined };
    loopback.addr = std.mem.readInt(u32, &[4]u8{ 127, 0, 0, 1 }, native_endian);
    try std.testing.expectEqual(status.ok, status.fromSyscall(linux.bind(fd, @ptrCast(&loopback), @sizeOf(linux.sockaddr.in))));
    try std.testing.expectEqual(status.ok, status.fromSyscall(linux.listen(fd, 7)));
    try std.testing.expectEqual(status.ok, readListener(fd, &listener));
    try std.testing.expectEqual(@as(u8, 1), listener.listening);
    try std.testing.expectEqual(af_inet, listener.family);
    try std.testing.expect(listener.port != 0);
    try std.testing.expectEqualSlices(u8, &.{ 127, 0, 0, 1 }, listener.address[0..4]);
    var info: [buffer_bytes]u8 = undefined;
    var length: u32 = 0;
    // qemu-user answers TCP_INFO with 4 bytes: the queue is then not known, as the caller is told.
    const emulated = read(fd, &info, &length) != status.ok or length < sacked_offset + 4;
    try std.testing.expectEqual(Listener{
        .address = listener.address,
        .family = af_inet,
        .port = listener.port,
        .listening = 1,
        .reuseport = 0,
        .device_bound = 0,
        .v6only = 0,
        .queue_known = @intFromBool(!emulated),
        .reserved = @splat(0),
        .queued = 0,
        .backlog = if (emulated) 0 else 7,
    }, listener);
}

test "markListening: only the listening socket is marked" {
    const listening_rc = linux.socket(linux.AF.INET, linux.SOCK.STREAM | linux.SOCK.CLOEXEC, 0);
    try std.testing.expectEqual(status.ok, status.fromSyscall(listening_rc));
    const listening_fd: i32 = @intCast(listening_rc);
    defer _ = linux.close(listening_fd);
    const idle_rc = linux.socket(linux.AF.INET, linux.SOCK.STREAM | linux.SOCK.CLOEXEC, 0);
    try std.testing.expectEqual(status.ok, status.fromSyscall(idle_rc));
    const idle_fd: i32 = @intCast(idle_rc);
    defer _ = linux.close(idle_fd);
    var loopback: linux.sockaddr.in = .{ .port = 0, .addr = undefined };
    loopback.addr = std.mem.readInt(u32, &[4]u8{ 127, 0, 0, 1 }, native_endian);
    try std.testing.expectEqual(status.ok, status.fromSyscall(linux.bind(listening_fd, @ptrCast(&loopback), @sizeOf(linux.sockaddr.in))));
    try std.testing.expectEqual(status.ok, status.fromSyscall(linux.listen(listening_fd, 1)));
    var pipe_fds: [2]i32 = undefined;
    try std.testing.expectEqual(status.ok, status.fromSyscall(linux.pipe(&pipe_fds)));
    defer _ = linux.close(pipe_fds[0]);
    defer _ = linux.close(pipe_fds[1]);
    const fds = [_]i32{ idle_fd, -1, listening_fd, pipe_fds[0], 1 << 30 };
    var marks: [fds.len]u8 = @splat(7);
    markListening(&fds, &marks);
    try std.testing.expectEqualSlices(u8, &.{ 0, 0, 1, 0, 0 }, &marks);
}

test "parseQueue: a listener's aliased fields; other states and short replies are null" {
    var info = std.mem.zeroes([buffer_bytes]u8);
    info[state_offset] = state_listen;
    std.mem.writeInt(u32, info[unacked_offset..][0..4], 129, native_endian);
    std.mem.writeInt(u32, info[sacked_offset..][0..4], 128, native_endian);
    try std.testing.expectEqual(Queue{ .queued = 129, .backlog = 128 }, parseQueue(&info).?);
    try std.testing.expectEqual(Queue{ .queued = 129, .backlog = 128 }, parseQueue(info[0 .. sacked_offset + 4]).?);
    try std.testing.expect(parseQueue(info[0 .. sacked_offset + 3]) == null);
    try std.testing.expect(parseQueue(&.{}) == null);
    info[state_offset] = 1; // ESTABLISHED: unacked and sacked count segments
    try std.testing.expect(parseQueue(&info) == null);
}

test "parseAddress: IPv4 and IPv6 replies; short and other families are null" {
    var v4: linux.sockaddr.in = .{ .port = std.mem.nativeToBig(u16, 8080), .addr = undefined };
    v4.addr = std.mem.readInt(u32, &[4]u8{ 127, 0, 0, 1 }, native_endian);
    const four = parseAddress(std.mem.asBytes(&v4)).?;
    try std.testing.expectEqual(af_inet, four.family);
    try std.testing.expectEqual(@as(u16, 8080), four.port);
    try std.testing.expectEqualSlices(u8, &.{ 127, 0, 0, 1, 0, 0, 0, 0 }, four.address[0..8]);
    try std.testing.expect(parseAddress(std.mem.asBytes(&v4)[0 .. @sizeOf(linux.sockaddr.in) - 1]) == null);
    const loopback = [16]u8{ 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 };
    const v6: linux.sockaddr.in6 = .{ .port = std.mem.nativeToBig(u16, 443), .flowinfo = 0, .addr = loopback, .scope_id = 0 };
    const six = parseAddress(std.mem.asBytes(&v6)).?;
    try std.testing.expectEqual(af_inet6, six.family);
    try std.testing.expectEqual(@as(u16, 443), six.port);
    try std.testing.expectEqualSlices(u8, &loopback, &six.address);
    try std.testing.expect(parseAddress(std.mem.asBytes(&v6)[0..20]) == null);
    var unix_name = std.mem.zeroes(linux.sockaddr.un);
    try std.testing.expect(parseAddress(std.mem.asBytes(&unix_name)) == null);
    try std.testing.expect(parseAddress(&.{ 2, 0, 0 }) == null);
}

test "fuzz: parsers never read out of bounds" {
    try std.testing.fuzz({}, fuzzParsers, .{});
}

fn fuzzParsers(_: void, smith: *std.testing.Smith) anyerror!void {
    var bytes: [64]u8 = undefined;
    const length = smith.slice(&bytes);
    if (parseQueue(bytes[0..length])) |_| try std.testing.expect(length >= sacked_offset + 4);
    if (parseAddress(bytes[0..length])) |found| try std.testing.expect(found.family == af_inet or found.family == af_inet6);
}
