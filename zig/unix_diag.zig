//! Unix-socket listener statistics from unix_diag, counted in place.
//!
//! For a listener name: queued is the accept-queue length of its LISTEN
//! sockets (UNIX_DIAG_RQLEN rqueue, summed over listeners of that name);
//! active counts ESTABLISHED sockets that carry the same name and an inode,
//! i.e. accepted server-side sockets. Connections still in the accept queue
//! have no inode and are not dumped by unix_diag at all (checked on 6.18);
//! client sockets are unnamed, so they never match.
//!
//! A path names different sockets in different mount namespaces, and unix_diag
//! lists the sockets of every mount namespace of the network namespace. So a
//! path socket's key is its name and the socket file it is bound to
//! (UNIX_DIAG_VFS: inode and device; accepted sockets carry their listener's):
//! the caller asks for the file it sees at the path, and a listener at the
//! same path in another mount namespace is another key. Abstract names have no
//! file (Vfs.none): they are per network namespace already.
const std = @import("std");
const assert = std.debug.assert;
const diag = @import("diag.zig");
const netlink = @import("netlink.zig");
const status = @import("status.zig");

const Status = status.Status;
const ok = status.ok;
const invalid: Status = status.fromErrno(.INVAL);

pub const af_unix: u8 = 1;
pub const show_name: u32 = 0x1;
pub const show_vfs: u32 = 0x2;
pub const show_rqlen: u32 = 0x10;
pub const show_all: u32 = show_name | show_vfs | show_rqlen;
pub const attribute_name: u16 = 0;
pub const attribute_vfs: u16 = 1;
pub const attribute_rqlen: u16 = 4;
/// struct unix_diag_vfs { __u32 udiag_vfs_ino; __u32 udiag_vfs_dev; }.
pub const vfs_bytes: u32 = 8;
/// struct unix_diag_rqlen { __u32 udiag_rqueue; __u32 udiag_wqueue; }.
pub const rqlen_bytes: u32 = 8;

pub const request_bytes: u32 = 24;
pub const message_bytes: u32 = 16;
/// sizeof(sockaddr_un.sun_path).
pub const name_bytes_max: u32 = 108;
pub const queries_max: u32 = 256;
/// Attributes per message; the kernel sends at most a handful.
const attributes_max: u32 = 64;

/// The socket file a path socket is bound to, as unix_diag reports it: the
/// inode number truncated to 32 bits, and the device of its file system in the
/// kernel's internal encoding (major << 20 | minor).
pub const Vfs = extern struct {
    inode: u32,
    device: u32,

    /// No file: an abstract or unnamed socket, or a kernel that did not say.
    pub const none = Vfs{ .inode = 0, .device = 0 };

    fn order(a: Vfs, b: Vfs) std.math.Order {
        const inodes = std.math.order(a.inode, b.inode);
        return if (inodes != .eq) inodes else std.math.order(a.device, b.device);
    }
};

/// What a socket counts for: its name, and for a path its socket file.
pub const Key = struct {
    name: []const u8,
    vfs: Vfs,
};

/// A requested name (query mode) or a listener found (all-listeners mode).
/// Mirrored by `UnixEntry` in raindrops/_native.py.
pub const Entry = extern struct {
    active: u64,
    queued: u64,
    /// LISTEN sockets with this name; 0 means none (the caller drops the entry).
    listeners: u32,
    name_len: u32,
    /// A path without its terminating NUL, or an abstract name: NUL then bytes.
    name: [name_bytes_max]u8,
    /// Query mode: the socket file the caller sees at the path (Vfs.none for an
    /// abstract name). All-listeners mode: the listener's socket file.
    vfs: Vfs,
    reserved: [4]u8,

    comptime {
        assert(@sizeOf(Entry) == 144);
        assert(@offsetOf(Entry, "vfs") == 132);
    }

    fn nameSlice(entry: *const Entry) []const u8 {
        assert(entry.name_len <= name_bytes_max);
        return entry.name[0..entry.name_len];
    }

    fn key(entry: *const Entry) Key {
        return .{ .name = entry.nameSlice(), .vfs = entry.vfs };
    }
};

pub const Socket = struct {
    state: u8,
    inode: u32,
    /// Null for an unnamed socket.
    name: ?[]const u8,
    /// Accept-queue length for a listener; null when the kernel did not say.
    rqueue: ?u32,
    /// The socket file of a path socket; null when the kernel did not say.
    vfs: ?Vfs,
};

/// Parses one unix_diag_msg and its attributes; null when malformed.
pub fn parseMessage(payload: []const u8) ?Socket {
    if (payload.len < message_bytes) return null;
    if (payload[0] != af_unix) return null;
    var socket = Socket{ .state = payload[2], .inode = netlink.readU32(payload, 4), .name = null, .rqueue = null, .vfs = null };
    var offset: usize = message_bytes;
    var attributes: u32 = 0;
    while (offset < payload.len) : (attributes += 1) {
        if (attributes == attributes_max) return null;
        const rest = payload[offset..];
        if (rest.len < netlink.attribute_header_bytes) return null;
        const length = netlink.readU16(rest, 0);
        if (length < netlink.attribute_header_bytes or length > rest.len) return null;
        const value = rest[netlink.attribute_header_bytes..length];
        switch (netlink.readU16(rest, 2)) {
            attribute_name => socket.name = normalizedName(value) orelse return null,
            attribute_vfs => {
                if (value.len < vfs_bytes) return null;
                socket.vfs = .{ .inode = netlink.readU32(value, 0), .device = netlink.readU32(value, 4) };
            },
            attribute_rqlen => {
                if (value.len < rqlen_bytes) return null;
                socket.rqueue = netlink.readU32(value, 0);
            },
            else => {},
        }
        offset += @min(std.mem.alignForward(usize, length, netlink.alignment_bytes), rest.len);
    }
    return socket;
}

/// A path name ends at its first NUL (the kernel keeps the terminator);
/// an abstract name (leading NUL) is taken byte for byte.
fn normalizedName(value: []const u8) ?[]const u8 {
    if (value.len > name_bytes_max) return null;
    if (value.len == 0 or value[0] == 0) return value;
    const end = std.mem.findScalar(u8, value, 0) orelse value.len;
    return value[0..end];
}

/// Orders names by length, then bytes. In an abstract name a NUL after the
/// first byte equals "@": ss(8) and /proc/net/unix print it so, and keys are
/// made from that spelling, so a key asked for must find its socket.
fn nameOrder(a: []const u8, b: []const u8) std.math.Order {
    assert(a.len <= name_bytes_max and b.len <= name_bytes_max);
    if (a.len != b.len) return std.math.order(a.len, b.len);
    if (a.len == 0) return .eq;
    if (a[0] != b[0]) return std.math.order(a[0], b[0]);
    if (a[0] != 0) return std.mem.order(u8, a, b);
    for (a[1..], b[1..]) |byte_a, byte_b| {
        const order = std.math.order(abstractByte(byte_a), abstractByte(byte_b));
        if (order != .eq) return order;
    }
    return .eq;
}

fn abstractByte(byte: u8) u8 {
    return if (byte == 0) '@' else byte;
}

/// Orders keys by name (nameOrder), then socket file.
fn keyOrder(a: Key, b: Key) std.math.Order {
    const names = nameOrder(a.name, b.name);
    return if (names != .eq) names else Vfs.order(a.vfs, b.vfs);
}

pub fn buildRequest(out: *[netlink.header_bytes + request_bytes]u8, states: u32, show: u32, sequence: u32) []u8 {
    assert(states != 0);
    @memset(out, 0);
    out[netlink.header_bytes] = af_unix;
    netlink.writeU32(out, netlink.header_bytes + 4, states);
    netlink.writeU32(out, netlink.header_bytes + 12, show);
    netlink.writeHeader(out, out.len, netlink.sock_diag_by_family, sequence);
    return out;
}

fn countSocket(entry: *Entry, socket: *const Socket) void {
    if (socket.state == netlink.state_listen) {
        entry.listeners +|= 1;
        entry.queued +|= socket.rqueue orelse 0;
    } else if (socket.state == netlink.state_established and socket.inode != 0) {
        entry.active +|= 1;
    }
}

// Counting: the unix side of the shared counting in diag.zig. A socket's key
// is its name and socket file; unnamed sockets (and empty names) count for nothing.

const RequestBuffer = [netlink.header_bytes + request_bytes]u8;

fn nameKeys(socket: *const Socket, keys: []Key) []const Key {
    assert(keys.len >= 1);
    const name = socket.name orelse return keys[0..0];
    if (name.len == 0) return keys[0..0];
    assert(name.len <= name_bytes_max);
    keys[0] = .{ .name = name, .vfs = socket.vfs orelse Vfs.none };
    return keys[0..1];
}

/// All-listeners mode: an accepted connection carries its listener's name and socket file.
fn connectionKeys(socket: *const Socket, keys: []Key) []const Key {
    if (socket.state != netlink.state_established or socket.inode == 0) return keys[0..0];
    return nameKeys(socket, keys);
}

fn listenerEntry(socket: *const Socket) ?Entry {
    if (socket.state != netlink.state_listen) return null;
    var keys: [1]Key = undefined;
    const found = nameKeys(socket, &keys);
    if (found.len == 0) return null;
    var entry = std.mem.zeroes(Entry);
    entry.name_len = @intCast(found[0].name.len);
    @memcpy(entry.name[0..found[0].name.len], found[0].name);
    entry.vfs = found[0].vfs;
    countSocket(&entry, socket);
    return entry;
}

fn listenerRequest(buffer: *RequestBuffer, sequence: u32) []const u8 {
    return buildRequest(buffer, netlink.states_listen, show_all, sequence);
}

fn connectionRequest(buffer: *RequestBuffer, listeners: []const Entry, sequence: u32) []const u8 {
    assert(listeners.len >= 1);
    return buildRequest(buffer, netlink.states_established, show_name | show_vfs, sequence);
}

const counting = diag.Counting(diag.Family(Key, Entry, Entry, Socket, RequestBuffer){
    .keys_max = 1,
    .queries_max = queries_max,
    .message_type = netlink.sock_diag_by_family,
    .order = keyOrder,
    .queryKey = Entry.key,
    .resultKey = Entry.key,
    .parseMessage = parseMessage,
    .queryKeys = nameKeys,
    .connectionKeys = connectionKeys,
    .listener = listenerEntry,
    .count = countSocket,
    .listenerRequest = listenerRequest,
    .connectionRequest = connectionRequest,
});

/// Query mode: entries carry the names asked for, and for paths the socket
/// file to count (a listener bound to another file is another socket); their
/// counts are filled in.
pub fn queryStats(fd: i32, entries: []Entry) Status {
    if (entries.len == 0) return ok;
    if (entries.len > queries_max) return invalid;
    for (entries) |*entry| {
        if (entry.name_len == 0 or entry.name_len > name_bytes_max) return invalid;
        entry.active = 0;
        entry.queued = 0;
        entry.listeners = 0;
    }
    var order_buffer: [queries_max]u16 = undefined;
    const order = order_buffer[0..entries.len];
    if (!counting.sortQueries(entries, order)) return invalid;
    // The queries are the entries: counting changes their counts, never their names.
    var counter = counting.QueryCounter{ .queries = entries, .results = entries, .order = order };
    var request: RequestBuffer = undefined;
    _ = buildRequest(&request, netlink.states_listen | netlink.states_established, show_all, netlink.sequenceNext());
    return netlink.dump(fd, &request, netlink.sock_diag_by_family, &counter);
}

/// All-listeners mode: a LISTEN dump, then an ESTABLISHED dump. -ENOBUFS with
/// `needed` set to an upper bound when `entries` is too small.
pub const allListeners = counting.allListeners;

// Tests.

fn testMessage(out: []u8, state: u8, inode: u32, name: ?[]const u8, rqueue: ?u32) []u8 {
    @memset(out, 0);
    out[0] = af_unix;
    out[1] = 1;
    out[2] = state;
    netlink.writeU32(out, 4, inode);
    var offset: usize = message_bytes;
    if (name) |bytes| {
        netlink.writeU16(out, offset, @intCast(netlink.attribute_header_bytes + bytes.len));
        netlink.writeU16(out, offset + 2, attribute_name);
        @memcpy(out[offset + 4 ..][0..bytes.len], bytes);
        offset += std.mem.alignForward(usize, netlink.attribute_header_bytes + bytes.len, 4);
    }
    if (rqueue) |value| {
        netlink.writeU16(out, offset, 12);
        netlink.writeU16(out, offset + 2, attribute_rqlen);
        netlink.writeU32(out, offset + 4, value);
        netlink.writeU32(out, offset + 8, 128);
        offset += 12;
    }
    return out[0..offset];
}

/// Appends a UNIX_DIAG_VFS attribute with `value_bytes` of value (8 is right)
/// to the message of `message_bytes_used` bytes at the start of `out`.
fn testAppendVfs(out: []u8, message_bytes_used: usize, vfs: Vfs, value_bytes: u16) []u8 {
    assert(value_bytes <= 16);
    const offset = message_bytes_used;
    @memset(out[offset..][0 .. netlink.attribute_header_bytes + 16], 0);
    netlink.writeU16(out, offset, @intCast(netlink.attribute_header_bytes + value_bytes));
    netlink.writeU16(out, offset + 2, attribute_vfs);
    netlink.writeU32(out, offset + 4, vfs.inode);
    netlink.writeU32(out, offset + 8, vfs.device);
    return out[0 .. offset + std.mem.alignForward(usize, netlink.attribute_header_bytes + value_bytes, 4)];
}

fn testVfsMessage(out: []u8, state: u8, inode: u32, name: ?[]const u8, rqueue: ?u32, vfs: Vfs) []u8 {
    const message = testMessage(out, state, inode, name, rqueue);
    return testAppendVfs(out, message.len, vfs, vfs_bytes);
}

const test_ours = Vfs{ .inode = 2164065, .device = 254 << 20 };
const test_theirs = Vfs{ .inode = 2761, .device = 27 };

test "parseMessage: name (path keeps no NUL, abstract kept), rqlen, malformed" {
    var buffer: [256]u8 = undefined;
    var socket = parseMessage(testMessage(&buffer, netlink.state_listen, 5, "/tmp/a.sock\x00", 3)).?;
    try std.testing.expectEqualStrings("/tmp/a.sock", socket.name.?);
    try std.testing.expectEqual(@as(?u32, 3), socket.rqueue);
    try std.testing.expectEqual(netlink.state_listen, socket.state);
    socket = parseMessage(testMessage(&buffer, netlink.state_established, 0, "\x00abs\x00x", null)).?;
    try std.testing.expectEqualStrings("\x00abs\x00x", socket.name.?);
    try std.testing.expectEqual(@as(?u32, null), socket.rqueue);
    const message = testMessage(&buffer, netlink.state_listen, 5, "/p", 1);
    var cut: usize = 0;
    while (cut < message.len) : (cut += 1) {
        // A cut inside a header or a value never parses; a cut in padding may.
        const parsed = parseMessage(message[0..cut]);
        if (cut < message_bytes or (cut > message_bytes and cut < message_bytes + 6)) {
            try std.testing.expect(parsed == null);
        }
    }
    netlink.writeU16(message, message_bytes, 2);
    try std.testing.expect(parseMessage(message) == null);
    const zeros: [16]u8 = @splat(0);
    try std.testing.expect(parseMessage(&zeros) == null);
}

test "parseMessage: UNIX_DIAG_VFS read; a short VFS or RQLEN value is malformed" {
    var buffer: [256]u8 = undefined;
    var socket = parseMessage(testVfsMessage(&buffer, netlink.state_listen, 5, "/a\x00", 3, test_ours)).?;
    try std.testing.expectEqual(@as(?Vfs, test_ours), socket.vfs);
    try std.testing.expectEqual(@as(?u32, 3), socket.rqueue);
    socket = parseMessage(testMessage(&buffer, netlink.state_listen, 5, "/a\x00", 3)).?;
    try std.testing.expectEqual(@as(?Vfs, null), socket.vfs);
    // A longer value (a future kernel's bigger struct) is read for its first 8 bytes.
    var message = testMessage(&buffer, netlink.state_listen, 5, "/a", null);
    socket = parseMessage(testAppendVfs(&buffer, message.len, test_theirs, 12)).?;
    try std.testing.expectEqual(@as(?Vfs, test_theirs), socket.vfs);
    for ([_]u16{ 0, 4, 7 }) |short| {
        message = testMessage(&buffer, netlink.state_listen, 5, "/a", null);
        try std.testing.expect(parseMessage(testAppendVfs(&buffer, message.len, test_ours, short)) == null);
    }
    message = testMessage(&buffer, netlink.state_listen, 5, null, 1);
    netlink.writeU16(message, message_bytes, 8); // RQLEN with a 4-byte value
    try std.testing.expect(parseMessage(message[0 .. message_bytes + 8]) == null);
    // A VFS attribute whose length runs past the message.
    message = testVfsMessage(&buffer, netlink.state_listen, 5, null, null, test_ours);
    try std.testing.expect(parseMessage(message[0 .. message.len - 1]) == null);
}

test "query counting: only sockets bound to the asked socket file count" {
    var entries: [2]Entry = undefined;
    for (&entries, [_][]const u8{ "/a", "@x" }, [_]Vfs{ test_ours, Vfs.none }) |*entry, name, vfs| {
        entry.* = std.mem.zeroes(Entry);
        entry.name_len = @intCast(name.len);
        @memcpy(entry.name[0..name.len], name);
        entry.vfs = vfs;
    }
    entries[1].name[0] = 0; // abstract
    var order: [2]u16 = undefined;
    try std.testing.expect(counting.sortQueries(&entries, &order));
    var counter = counting.QueryCounter{ .queries = &entries, .results = &entries, .order = &order };
    var buffer: [256]u8 = undefined;
    // The same path in another mount namespace: another file, not counted.
    try std.testing.expectEqual(ok, counter.message(testVfsMessage(&buffer, netlink.state_listen, 1, "/a\x00", 50, test_theirs)));
    try std.testing.expectEqual(ok, counter.message(testVfsMessage(&buffer, netlink.state_established, 2, "/a\x00", null, test_theirs)));
    try std.testing.expectEqual(ok, counter.message(testVfsMessage(&buffer, netlink.state_listen, 3, "/a\x00", 2, test_ours)));
    try std.testing.expectEqual(ok, counter.message(testVfsMessage(&buffer, netlink.state_established, 4, "/a\x00", null, test_ours)));
    // A path socket the kernel gave no file for cannot be told apart: not counted.
    try std.testing.expectEqual(ok, counter.message(testMessage(&buffer, netlink.state_listen, 5, "/a\x00", 7)));
    try std.testing.expectEqual(ok, counter.message(testMessage(&buffer, netlink.state_listen, 6, "\x00x", 4)));
    try std.testing.expectEqual(@as(u32, 1), entries[0].listeners);
    try std.testing.expectEqual(@as(u64, 2), entries[0].queued);
    try std.testing.expectEqual(@as(u64, 1), entries[0].active);
    try std.testing.expectEqual(@as(u64, 4), entries[1].queued);
}

test "all-listeners: one path, two socket files, two entries; connections to their own" {
    var found: [3]Entry = undefined;
    var collector = counting.ListenerCollector{ .results = &found };
    var buffer: [256]u8 = undefined;
    try std.testing.expectEqual(ok, collector.message(testVfsMessage(&buffer, netlink.state_listen, 1, "/a\x00", 50, test_theirs)));
    try std.testing.expectEqual(ok, collector.message(testVfsMessage(&buffer, netlink.state_listen, 2, "/a\x00", 2, test_ours)));
    try std.testing.expectEqual(ok, collector.message(testVfsMessage(&buffer, netlink.state_listen, 3, "/a\x00", 1, test_ours)));
    const unique = counting.mergeListeners(found[0..collector.count]);
    try std.testing.expectEqual(@as(usize, 2), unique);
    var attributor = counting.ConnectionAttributor{ .results = found[0..unique] };
    try std.testing.expectEqual(ok, attributor.message(testVfsMessage(&buffer, netlink.state_established, 9, "/a\x00", null, test_ours)));
    for (found[0..unique]) |entry| {
        try std.testing.expectEqualStrings("/a", entry.nameSlice());
        if (entry.vfs.inode == test_ours.inode) {
            try std.testing.expectEqual(test_ours, entry.vfs);
            try std.testing.expectEqual(@as(u64, 3), entry.queued);
            try std.testing.expectEqual(@as(u64, 1), entry.active);
            try std.testing.expectEqual(@as(u32, 2), entry.listeners);
        } else {
            try std.testing.expectEqual(test_theirs, entry.vfs);
            try std.testing.expectEqual(@as(u64, 50), entry.queued);
            try std.testing.expectEqual(@as(u64, 0), entry.active);
        }
    }
    try std.testing.expectEqual(std.math.Order.lt, keyOrder(.{ .name = "/a", .vfs = test_theirs }, .{ .name = "/a", .vfs = test_ours }));
    try std.testing.expectEqual(std.math.Order.lt, keyOrder(.{ .name = "/a", .vfs = test_ours }, .{ .name = "/b", .vfs = Vfs.none }));
}

test "query and all-listeners counting" {
    var entries: [2]Entry = undefined;
    for (&entries, [_][]const u8{ "/b", "/a" }) |*entry, name| {
        entry.* = std.mem.zeroes(Entry);
        entry.name_len = @intCast(name.len);
        @memcpy(entry.name[0..name.len], name);
    }
    var order: [2]u16 = undefined;
    try std.testing.expect(counting.sortQueries(&entries, &order));
    var counter = counting.QueryCounter{ .queries = &entries, .results = &entries, .order = &order };
    var buffer: [256]u8 = undefined;
    try std.testing.expectEqual(ok, counter.message(testMessage(&buffer, netlink.state_listen, 1, "/a\x00", 2)));
    try std.testing.expectEqual(ok, counter.message(testMessage(&buffer, netlink.state_listen, 2, "/a\x00", 1)));
    try std.testing.expectEqual(ok, counter.message(testMessage(&buffer, netlink.state_established, 3, "/a\x00", null)));
    try std.testing.expectEqual(ok, counter.message(testMessage(&buffer, netlink.state_established, 0, "/a\x00", null)));
    try std.testing.expectEqual(ok, counter.message(testMessage(&buffer, netlink.state_established, 4, null, null)));
    try std.testing.expectEqual(ok, counter.message(testMessage(&buffer, netlink.state_established, 4, "/c", null)));
    try std.testing.expectEqual(@as(u32, 2), entries[1].listeners);
    try std.testing.expectEqual(@as(u64, 3), entries[1].queued);
    try std.testing.expectEqual(@as(u64, 1), entries[1].active);
    try std.testing.expectEqual(@as(u32, 0), entries[0].listeners);

    var found: [3]Entry = undefined;
    var collector = counting.ListenerCollector{ .results = &found };
    try std.testing.expectEqual(ok, collector.message(testMessage(&buffer, netlink.state_listen, 1, "/z", 2)));
    try std.testing.expectEqual(ok, collector.message(testMessage(&buffer, netlink.state_listen, 2, "/y", 0)));
    try std.testing.expectEqual(ok, collector.message(testMessage(&buffer, netlink.state_listen, 3, "/z", 1)));
    try std.testing.expectEqual(ok, collector.message(testMessage(&buffer, netlink.state_listen, 4, null, 1)));
    const unique = counting.mergeListeners(found[0..collector.count]);
    try std.testing.expectEqual(@as(usize, 2), unique);
    var attributor = counting.ConnectionAttributor{ .results = found[0..unique] };
    try std.testing.expectEqual(ok, attributor.message(testMessage(&buffer, netlink.state_established, 9, "/z", null)));
    try std.testing.expectEqualStrings("/y", found[0].nameSlice());
    try std.testing.expectEqual(@as(u64, 3), found[1].queued);
    try std.testing.expectEqual(@as(u32, 2), found[1].listeners);
    try std.testing.expectEqual(@as(u64, 1), found[1].active);

    entries[0] = entries[1];
    try std.testing.expect(!counting.sortQueries(&entries, &order));

    try std.testing.expectEqual(std.math.Order.eq, nameOrder("\x00a\x00b", "\x00a@b"));
    try std.testing.expectEqual(std.math.Order.lt, nameOrder("/a\x00", "/a@"));
}

test "fuzz parseMessage: random payloads never read out of bounds" {
    try std.testing.fuzz({}, fuzzParse, .{});
}

fn fuzzParse(_: void, smith: *std.testing.Smith) anyerror!void {
    var payload: [256]u8 = undefined;
    const length = smith.slice(&payload);
    if (parseMessage(payload[0..length])) |socket| {
        if (socket.name) |name| try std.testing.expect(name.len <= name_bytes_max);
    }
    var found: [1]Entry = undefined;
    var collector = counting.ListenerCollector{ .results = &found };
    _ = collector.message(payload[0..length]);
}
