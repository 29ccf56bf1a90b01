//! NETLINK_SOCK_DIAG transport: open a socket, send one dump request, receive
//! its reply datagrams and walk the messages in them.
//!
//! The walker is a pure function over one received datagram: every length is
//! checked against the slice before it is used, so a truncated or hostile
//! datagram yields -EBADMSG, never a read past its end. Replies that belong to
//! another request (a stale dump abandoned by an earlier call) are skipped by
//! their sequence number.
const std = @import("std");
const linux = std.os.linux;
const assert = std.debug.assert;
const native_endian = @import("builtin").cpu.arch.endian();
const status = @import("status.zig");

const Status = status.Status;
const ok = status.ok;

pub const header_bytes: u32 = 16;
pub const alignment_bytes: u32 = 4;
/// nlmsg_type of every sock_diag request and reply (inet_diag and unix_diag).
pub const sock_diag_by_family: u16 = 20;
pub const type_noop: u16 = 1;
pub const type_error: u16 = 2;
pub const type_done: u16 = 3;
pub const type_overrun: u16 = 4;
pub const flag_request: u16 = 0x1;
pub const flag_dump: u16 = 0x300;
/// The kernel sends dump datagrams of at most 32 KiB; twice that leaves room.
pub const receive_bytes: usize = 64 * 1024;
pub const receive_timeout_s: isize = 5;
/// 2^20 datagrams of up to 32 KiB is far past any real dump: more is a loop.
pub const receives_max: u32 = 1 << 20;
const interrupts_max: u32 = 1024;

pub const bad_message: Status = status.fromErrno(.BADMSG);

/// Last sequence number handed out; shared by every thread and socket.
var sequence_last: u32 = 0;

pub fn sequenceNext() u32 {
    return @atomicRmw(u32, &sequence_last, .Add, 1, .monotonic) +% 1;
}

pub fn readU16(bytes: []const u8, offset: usize) u16 {
    assert(offset + 2 <= bytes.len);
    return std.mem.readInt(u16, bytes[offset..][0..2], native_endian);
}

pub fn readU32(bytes: []const u8, offset: usize) u32 {
    assert(offset + 4 <= bytes.len);
    return std.mem.readInt(u32, bytes[offset..][0..4], native_endian);
}

pub fn writeU16(bytes: []u8, offset: usize, value: u16) void {
    assert(offset + 2 <= bytes.len);
    std.mem.writeInt(u16, bytes[offset..][0..2], value, native_endian);
}

pub fn writeU32(bytes: []u8, offset: usize, value: u32) void {
    assert(offset + 4 <= bytes.len);
    std.mem.writeInt(u32, bytes[offset..][0..4], value, native_endian);
}

/// Writes an nlmsghdr for a sock_diag dump request of `length` bytes in all.
/// Socket states as sock_diag numbers them (TCP's; unix sockets reuse them).
pub const state_established: u8 = 1;
pub const state_listen: u8 = 10;
pub const states_listen: u32 = 1 << state_listen;
pub const states_established: u32 = 1 << state_established;
pub const attribute_header_bytes: u32 = 4;

pub fn writeHeader(bytes: []u8, length: u32, message_type: u16, sequence: u32) void {
    assert(length >= header_bytes);
    assert(length <= bytes.len);
    assert(length % alignment_bytes == 0);
    writeU32(bytes, 0, length);
    writeU16(bytes, 4, message_type);
    writeU16(bytes, 6, flag_request | flag_dump);
    writeU32(bytes, 8, sequence);
    writeU32(bytes, 12, 0); // pid 0: the kernel fills in this socket's port id.
}

/// The nlmsg_type of a request built by writeHeader: sock_diag answers a
/// dump with messages of its request's type.
pub fn requestType(request: []const u8) u16 {
    assert(request.len >= header_bytes);
    return readU16(request, 4);
}

/// Opens a sock_diag socket; returns its fd, or -errno.
pub fn open() i32 {
    const rc = linux.socket(linux.AF.NETLINK, linux.SOCK.RAW | linux.SOCK.CLOEXEC, linux.NETLINK.SOCK_DIAG);
    const opened = status.fromSyscall(rc);
    if (opened != ok) return opened;
    const fd: i32 = @intCast(rc);
    assert(fd >= 0);
    // A receive timeout, so that a kernel that never answers cannot hang the caller.
    const timeout = linux.timeval{ .sec = receive_timeout_s, .usec = 0 };
    const set = status.fromSyscall(linux.setsockopt(
        fd,
        linux.SOL.SOCKET,
        linux.SO.RCVTIMEO,
        std.mem.asBytes(&timeout),
        @sizeOf(linux.timeval),
    ));
    if (set != ok) {
        _ = linux.close(fd);
        return set;
    }
    return fd;
}

pub fn close(fd: i32) Status {
    if (fd < 0) return status.fromErrno(.BADF);
    // close(2) releases the fd even when it reports EINTR: never retry it.
    const closed = status.fromSyscall(linux.close(fd));
    return if (closed == status.fromErrno(.INTR)) ok else closed;
}

fn send(fd: i32, request: []const u8) Status {
    assert(request.len >= header_bytes);
    const kernel = linux.sockaddr.nl{ .pid = 0, .groups = 0 };
    var interrupts: u32 = 0;
    while (interrupts < interrupts_max) : (interrupts += 1) {
        const rc = linux.sendto(fd, request.ptr, request.len, 0, @ptrCast(&kernel), @sizeOf(linux.sockaddr.nl));
        switch (linux.errno(rc)) {
            .SUCCESS => return if (rc == request.len) ok else status.fromErrno(.MSGSIZE),
            .INTR => continue,
            else => return status.fromSyscall(rc),
        }
    }
    return status.fromErrno(.INTR);
}

/// Receives one datagram into `buffer`; returns its length, or -errno.
/// A datagram larger than the buffer is an error, never a silent truncation.
fn receive(fd: i32, buffer: []u8) i64 {
    assert(buffer.len > 0);
    var interrupts: u32 = 0;
    while (interrupts < interrupts_max) : (interrupts += 1) {
        const rc = linux.recvfrom(fd, buffer.ptr, buffer.len, linux.MSG.TRUNC, null, null);
        switch (linux.errno(rc)) {
            .SUCCESS => {
                if (rc > buffer.len) return status.fromErrno(.MSGSIZE);
                return @intCast(rc);
            },
            .INTR => continue,
            .AGAIN => return status.fromErrno(.TIMEDOUT),
            else => return status.fromSyscall(rc),
        }
    }
    return status.fromErrno(.INTR);
}

pub const Walk = struct {
    /// 0, or the failure that ends the dump (-errno from the kernel, -EBADMSG).
    status: Status,
    /// The dump is over: NLMSG_DONE or NLMSG_ERROR of our sequence was seen.
    done: bool,
};

/// Walks the messages of one datagram. Messages of `message_type` with our
/// `sequence` go to `handler.message(payload) Status`; a non-zero status
/// from the handler stops the walk.
pub fn walk(datagram: []const u8, sequence: u32, message_type: u16, handler: anytype) Walk {
    assert(message_type > type_overrun);
    var offset: usize = 0;
    var messages: usize = 0;
    while (offset < datagram.len) : (messages += 1) {
        // Every message is at least a header long, which bounds the loop.
        assert(messages <= datagram.len / header_bytes);
        const rest = datagram[offset..];
        if (rest.len < header_bytes) return .{ .status = bad_message, .done = false };
        const length = readU32(rest, 0);
        if (length < header_bytes or length > rest.len) return .{ .status = bad_message, .done = false };
        const kind = readU16(rest, 4);
        const payload = rest[header_bytes..length];
        offset += @min(std.mem.alignForward(usize, length, alignment_bytes), rest.len);
        if (readU32(rest, 8) != sequence) continue;
        switch (kind) {
            type_noop => {},
            type_done => return .{ .status = errorOf(payload, ok), .done = true },
            type_error => {
                if (payload.len < 4) return .{ .status = bad_message, .done = true };
                const code = errorOf(payload, bad_message);
                // An error code of 0 is an acknowledgement, not the end of a dump.
                if (code != ok) return .{ .status = code, .done = true };
            },
            type_overrun => return .{ .status = status.fromErrno(.IO), .done = true },
            else => if (kind == message_type) {
                const handled: Status = handler.message(payload);
                if (handled != ok) return .{ .status = handled, .done = false };
            },
        }
    }
    assert(offset == datagram.len);
    return .{ .status = ok, .done = false };
}

/// The i32 at the start of an NLMSG_ERROR or NLMSG_DONE payload, as a status.
/// A DONE without one (old kernels) means success: `missing`.
fn errorOf(payload: []const u8, missing: Status) Status {
    if (payload.len < 4) return missing;
    const code: i32 = @bitCast(readU32(payload, 0));
    if (code > 0 or code < -status.errno_max) return bad_message;
    return code;
}

/// Sends `request` (whose header carries its sequence number) and feeds every
/// reply message of `message_type` to `handler` until the dump is done.
pub fn dump(fd: i32, request: []const u8, message_type: u16, handler: anytype) Status {
    assert(request.len >= header_bytes);
    assert(readU32(request, 0) == request.len);
    if (fd < 0) return status.fromErrno(.BADF);
    const sent = send(fd, request);
    if (sent != ok) return sent;
    const sequence = readU32(request, 8);
    var buffer: [receive_bytes]u8 align(8) = undefined;
    var receives: u32 = 0;
    while (receives < receives_max) : (receives += 1) {
        const received = receive(fd, &buffer);
        if (received < 0) return @intCast(received);
        // A netlink socket never reaches end of file; an empty read is a lost dump.
        if (received == 0) return status.fromErrno(.CONNRESET);
        const step = walk(buffer[0..@intCast(received)], sequence, message_type, handler);
        if (step.status != ok) return step.status;
        if (step.done) return ok;
    }
    return status.fromErrno(.OVERFLOW);
}

// Tests: hand-built datagrams.

const TestHandler = struct {
    count: u32 = 0,
    bytes: usize = 0,
    fail_at: u32 = std.math.maxInt(u32),

    pub fn message(handler: *TestHandler, payload: []const u8) Status {
        if (handler.count == handler.fail_at) return bad_message;
        handler.count += 1;
        handler.bytes += payload.len;
        return ok;
    }
};

fn testMessage(out: []u8, kind: u16, sequence: u32, payload: []const u8) usize {
    const length: u32 = @intCast(header_bytes + payload.len);
    const padded = std.mem.alignForward(usize, length, alignment_bytes);
    assert(padded <= out.len);
    @memset(out[0..padded], 0);
    writeU32(out, 0, length);
    writeU16(out, 4, kind);
    writeU16(out, 6, 0x2);
    writeU32(out, 8, sequence);
    writeU32(out, 12, 1234);
    @memcpy(out[header_bytes..][0..payload.len], payload);
    return padded;
}

test "walk: messages, foreign sequence skipped, DONE ends" {
    var datagram: [256]u8 = undefined;
    var used: usize = 0;
    used += testMessage(datagram[used..], sock_diag_by_family, 7, "abcde");
    used += testMessage(datagram[used..], sock_diag_by_family, 6, "stale");
    used += testMessage(datagram[used..], type_noop, 7, "");
    used += testMessage(datagram[used..], sock_diag_by_family, 7, "xyz");
    var handler: TestHandler = .{};
    const partial = walk(datagram[0..used], 7, sock_diag_by_family, &handler);
    try std.testing.expectEqual(Walk{ .status = ok, .done = false }, partial);
    try std.testing.expectEqual(@as(u32, 2), handler.count);
    try std.testing.expectEqual(@as(usize, 8), handler.bytes);

    var zero: [4]u8 = .{ 0, 0, 0, 0 };
    used += testMessage(datagram[used..], type_done, 6, &zero); // stale DONE: skipped
    used += testMessage(datagram[used..], type_done, 7, &zero);
    used += testMessage(datagram[used..], sock_diag_by_family, 7, "after");
    handler = .{};
    const whole = walk(datagram[0..used], 7, sock_diag_by_family, &handler);
    try std.testing.expectEqual(Walk{ .status = ok, .done = true }, whole);
    try std.testing.expectEqual(@as(u32, 2), handler.count);
}

test "walk: NLMSG_ERROR carries -errno; zero is an acknowledgement" {
    var datagram: [128]u8 = undefined;
    var code: [4]u8 = undefined;
    writeU32(&code, 0, @bitCast(@as(i32, -2)));
    var used = testMessage(&datagram, type_error, 9, &code);
    var handler: TestHandler = .{};
    try std.testing.expectEqual(Walk{ .status = -2, .done = true }, walk(datagram[0..used], 9, 20, &handler));

    writeU32(&code, 0, 0);
    used = testMessage(&datagram, type_error, 9, &code);
    try std.testing.expectEqual(Walk{ .status = ok, .done = false }, walk(datagram[0..used], 9, 20, &handler));

    used = testMessage(&datagram, type_error, 9, code[0..3]);
    try std.testing.expectEqual(bad_message, walk(datagram[0..used], 9, 20, &handler).status);

    writeU32(&code, 0, 5);
    used = testMessage(&datagram, type_error, 9, &code);
    try std.testing.expectEqual(bad_message, walk(datagram[0..used], 9, 20, &handler).status);

    writeU32(&code, 0, @bitCast(@as(i32, -4)));
    used = testMessage(&datagram, type_done, 9, &code);
    try std.testing.expectEqual(Walk{ .status = -4, .done = true }, walk(datagram[0..used], 9, 20, &handler));
    used = testMessage(&datagram, type_done, 9, "");
    try std.testing.expectEqual(Walk{ .status = ok, .done = true }, walk(datagram[0..used], 9, 20, &handler));
}

test "walk: truncated and hostile lengths are -EBADMSG" {
    var datagram: [64]u8 = undefined;
    const used = testMessage(&datagram, sock_diag_by_family, 1, "payload!");
    var handler: TestHandler = .{};
    // Cut anywhere inside the message.
    var cut: usize = 1;
    while (cut < used) : (cut += 1) {
        const step = walk(datagram[0..cut], 1, sock_diag_by_family, &handler);
        if (cut < header_bytes + 8) try std.testing.expectEqual(bad_message, step.status);
    }
    // Length below a header, and beyond the datagram.
    writeU32(&datagram, 0, 3);
    try std.testing.expectEqual(bad_message, walk(datagram[0..used], 1, 20, &handler).status);
    writeU32(&datagram, 0, 0xffff_fff0);
    try std.testing.expectEqual(bad_message, walk(datagram[0..used], 1, 20, &handler).status);
    // An empty datagram holds no message.
    try std.testing.expectEqual(Walk{ .status = ok, .done = false }, walk(datagram[0..0], 1, 20, &handler));
}

test "walk: a handler failure stops the walk" {
    var datagram: [128]u8 = undefined;
    var used: usize = 0;
    used += testMessage(datagram[used..], sock_diag_by_family, 3, "one");
    used += testMessage(datagram[used..], sock_diag_by_family, 3, "two");
    var handler: TestHandler = .{ .fail_at = 1 };
    try std.testing.expectEqual(bad_message, walk(datagram[0..used], 3, 20, &handler).status);
    try std.testing.expectEqual(@as(u32, 1), handler.count);
}

test "writeHeader and sequenceNext" {
    var bytes: [32]u8 = undefined;
    writeHeader(&bytes, 32, sock_diag_by_family, 77);
    try std.testing.expectEqual(@as(u32, 32), readU32(&bytes, 0));
    try std.testing.expectEqual(sock_diag_by_family, readU16(&bytes, 4));
    try std.testing.expectEqual(sock_diag_by_family, requestType(&bytes));
    try std.testing.expectEqual(@as(u16, 0x301), readU16(&bytes, 6));
    try std.testing.expectEqual(@as(u32, 77), readU32(&bytes, 8));
    const first = sequenceNext();
    try std.testing.expect(sequenceNext() != first);
}

test "fuzz walk: random datagrams never read out of bounds" {
    try std.testing.fuzz({}, fuzzWalk, .{});
}

fn fuzzWalk(_: void, smith: *std.testing.Smith) anyerror!void {
    var datagram: [512]u8 = undefined;
    const length = smith.slice(&datagram);
    var handler: TestHandler = .{};
    const sequence = if (length >= 12) readU32(&datagram, 8) else 0;
    const step = walk(datagram[0..length], sequence, sock_diag_by_family, &handler);
    try std.testing.expect(step.status <= ok);
    try std.testing.expect(handler.bytes <= length);
}
