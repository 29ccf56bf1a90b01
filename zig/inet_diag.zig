//! TCP listener statistics from inet_diag: request and bytecode builder, reply
//! parser, and the counting itself, so that no Python object is made per socket.
//!
//! Query mode: the caller asks for addresses A:P. A LISTEN socket matches when
//! it is on port P and its local address equals A (a v4 A also equals the
//! v4-mapped ::ffff:A); a wildcard A (all zeros) matches every listener of its
//! family on P (0.0.0.0 also covers v4-mapped AF_INET6 sockets). queued sums
//! the accept queues (idiag_rqueue) of the matching listeners; active counts
//! accepted (inode != 0) ESTABLISHED sockets matched by the same rule. The
//! caller may ask for the ESTABLISHED sockets alone (it knows the queues from
//! elsewhere) or the LISTEN ones alone (the kernel then never walks its table
//! of connections).
//!
//! All-listeners mode: every LISTEN socket is a result keyed by (family,
//! address, port), equal keys merged. An accepted ESTABLISHED socket counts
//! for the listener of its exact local address and port, else for its family's
//! wildcard listener on that port. Listeners are dumped first, in their own
//! dumps, so the attribution does not depend on the kernel's dump order.
//!
//! Every dump walks the kernel's whole table of connections once (the hash
//! of established sockets, 262,144 buckets on a machine with 24 GiB): what a
//! request can save is the work per socket. Sockets on one port are asked for
//! with the port in the request's own id.idiag_sport, which the kernel tests
//! before anything else; only sockets on several ports need a filter program.
const std = @import("std");
const assert = std.debug.assert;
const diag = @import("diag.zig");
const netlink = @import("netlink.zig");
const status = @import("status.zig");

const Status = status.Status;
const ok = status.ok;

pub const af_inet: u16 = 2;
pub const af_inet6: u16 = 10;
pub const ipproto_tcp: u8 = 6;

/// The compat request (TCPDIAG_GETSOCK, struct inet_diag_req): its family is
/// always AF_UNSPEC, IPv4 and IPv6 sockets in one walk of the kernel's tables,
/// where SOCK_DIAG_BY_FAMILY (struct inet_diag_req_v2) asks for one family.
pub const tcpdiag_getsock: u16 = 18;
pub const af_unspec: u16 = 0;
pub const request_legacy_bytes: u32 = 60;
pub const request_v2_bytes: u32 = 56;
pub const message_bytes: u32 = 72;
const inet_diag_req_bytecode: u16 = 1;
/// id.idiag_sport, big-endian, in each request layout.
const legacy_sport_offset: u32 = 4;
const v2_sport_offset: u32 = 8;
const legacy_states_offset: u32 = 52;
const v2_states_offset: u32 = 4;

/// The states a query may ask for.
pub const states_all: u32 = netlink.states_listen | netlink.states_established;

const bc_jmp: u8 = 1;
const bc_s_ge: u8 = 2;
const bc_s_le: u8 = 3;
const bc_s_cond: u8 = 7;
const op_bytes: u32 = 4;
const hostcond_bytes: u32 = 8;
/// The largest block: S_GE (8) + S_LE (8) + S_COND with an IPv6 address (28) + JMP (4).
const block_bytes_max: u32 = 8 + 8 + op_bytes + hostcond_bytes + 16 + op_bytes;

/// Queries per request: keeps every jump within the u16 `no` of an op.
pub const queries_max: u32 = 256;
pub const bytecode_bytes_max: u32 = queries_max * block_bytes_max;
pub const request_bytes_max: u32 = netlink.header_bytes + request_legacy_bytes + netlink.attribute_header_bytes + bytecode_bytes_max;

comptime {
    assert(bytecode_bytes_max + op_bytes <= std.math.maxInt(u16));
    assert(netlink.attribute_header_bytes + bytecode_bytes_max <= std.math.maxInt(u16));
    assert(request_v2_bytes <= request_legacy_bytes);
    assert(request_legacy_bytes % netlink.alignment_bytes == 0);
    assert(request_v2_bytes % netlink.alignment_bytes == 0);
}

/// One requested address. Mirrored by `TcpQuery` in raindrops/_native.py.
pub const Query = extern struct {
    /// Network byte order; an IPv4 address fills the first 4 bytes, the rest zero.
    address: [16]u8,
    family: u16,
    /// Host byte order.
    port: u16,
    /// 1 when `address` is all zeros (0.0.0.0 or ::).
    wildcard: u8,
    reserved: [3]u8,

    comptime {
        assert(@sizeOf(Query) == 24);
    }
};

/// One listener's statistics. Mirrored by `TcpResult` in raindrops/_native.py.
pub const Result = extern struct {
    address: [16]u8,
    family: u16,
    port: u16,
    /// LISTEN sockets matched; 0 means no listener (the caller drops the entry).
    listeners: u32,
    active: u64,
    queued: u64,

    comptime {
        assert(@sizeOf(Result) == 40);
    }
};

/// The fields of one inet_diag_msg that the counting needs.
pub const Socket = struct {
    family: u16,
    state: u8,
    port: u16,
    address: [16]u8,
    rqueue: u32,
    inode: u32,
};

/// Parses one inet_diag_msg; null when it is too short or of an unknown family.
pub fn parseMessage(payload: []const u8) ?Socket {
    if (payload.len < message_bytes) return null;
    const family: u16 = payload[0];
    if (family != af_inet and family != af_inet6) return null;
    var socket: Socket = .{
        .family = family,
        .state = payload[1],
        .port = std.mem.readInt(u16, payload[4..6], .big),
        .address = payload[8..24].*,
        .rqueue = netlink.readU32(payload, 56),
        .inode = netlink.readU32(payload, 68),
    };
    if (family == af_inet) @memset(socket.address[4..], 0);
    return socket;
}

const Key = struct {
    port: u16,
    family: u16,
    address: [16]u8,

    fn order(a: Key, b: Key) std.math.Order {
        if (a.port != b.port) return std.math.order(a.port, b.port);
        if (a.family != b.family) return std.math.order(a.family, b.family);
        return std.mem.order(u8, &a.address, &b.address);
    }

    fn wildcardOf(family: u16, port: u16) Key {
        return .{ .port = port, .family = family, .address = @splat(0) };
    }

    fn ofQuery(query: *const Query) Key {
        return .{ .port = query.port, .family = query.family, .address = query.address };
    }

    fn ofResult(result: *const Result) Key {
        return .{ .port = result.port, .family = result.family, .address = result.address };
    }
};

const v4_mapped_prefix = [12]u8{ 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

fn isV4Mapped(socket: *const Socket) bool {
    return socket.family == af_inet6 and std.mem.eql(u8, socket.address[0..12], &v4_mapped_prefix);
}

/// The keys of every query that matches `socket` by the query-mode rule,
/// without duplicates (a listener on 0.0.0.0 is its own wildcard).
fn matchingKeys(socket: *const Socket, keys: []Key) []const Key {
    assert(keys.len >= keys_max);
    var count: usize = 0;
    const exact = Key{ .port = socket.port, .family = socket.family, .address = socket.address };
    appendUnique(keys, &count, exact);
    if (isV4Mapped(socket)) {
        var v4 = Key.wildcardOf(af_inet, socket.port);
        v4.address[0..4].* = socket.address[12..16].*;
        appendUnique(keys, &count, v4);
        appendUnique(keys, &count, Key.wildcardOf(af_inet, socket.port));
    }
    appendUnique(keys, &count, Key.wildcardOf(socket.family, socket.port));
    assert(count >= 1 and count <= keys.len);
    return keys[0..count];
}

fn appendUnique(keys: []Key, count: *usize, key: Key) void {
    for (keys[0..count.*]) |existing| {
        if (Key.order(existing, key) == .eq) return;
    }
    assert(count.* < keys.len);
    keys[count.*] = key;
    count.* += 1;
}

pub fn validQuery(query: *const Query) bool {
    const zero = std.mem.allEqual(u8, &query.address, 0);
    if (query.wildcard > 1 or (query.wildcard == 1) != zero) return false;
    return switch (query.family) {
        af_inet => std.mem.allEqual(u8, query.address[4..], 0),
        af_inet6 => true,
        else => false,
    };
}

// Request building (pure).

/// What one dump asks the kernel for.
pub const Dump = struct {
    states: u32,
    /// AF_UNSPEC (both families: the compat request), AF_INET or AF_INET6.
    family: u16,
    /// Host order. When not 0, the kernel itself passes over sockets on other
    /// ports (id.idiag_sport): no filter program runs.
    port: u16,
    /// A filter program block per entry (its port, and its address unless a
    /// wildcard), for sockets on several ports; empty: no program.
    filters: []const Query,

    fn valid(dump: *const Dump) bool {
        if (dump.states == 0 or dump.states & ~states_all != 0) return false;
        if (dump.filters.len > queries_max) return false;
        if (dump.port != 0 and dump.filters.len != 0) return false;
        return dump.family == af_unspec or dump.family == af_inet or dump.family == af_inet6;
    }
};

/// Query mode's dump. IPv6 queries alone need IPv6 sockets alone; an IPv4
/// query also matches v4-mapped IPv6 sockets, so it needs both families (one
/// walk either way: the kernel keeps both in one table). Queries on one port
/// use the kernel's port test; the counting matches the addresses anyway.
pub fn queryDump(states: u32, queries: []const Query) Dump {
    assert(queries.len >= 1 and queries.len <= queries_max);
    const port = queries[0].port;
    var one_port = port != 0; // port 0 in the id means "any": a program matches it exactly
    var only_v6 = true;
    for (queries) |*query| {
        one_port = one_port and query.port == port;
        only_v6 = only_v6 and query.family == af_inet6;
    }
    return .{
        .states = states,
        .family = if (only_v6) af_inet6 else af_unspec,
        .port = if (one_port) port else 0,
        .filters = if (one_port) &.{} else queries,
    };
}

/// Builds the dump request into `out`; returns the request bytes, a prefix of
/// `out`. Its nlmsg_type is also the type of its reply messages.
pub fn buildRequest(out: []u8, dump: Dump, sequence: u32) []u8 {
    assert(dump.valid());
    assert(out.len >= request_bytes_max);
    const start = netlink.header_bytes;
    const legacy = dump.family == af_unspec;
    const request_bytes = if (legacy) request_legacy_bytes else request_v2_bytes;
    @memset(out[start..][0..request_bytes], 0);
    if (!legacy) {
        out[start] = @intCast(dump.family);
        out[start + 1] = ipproto_tcp;
    }
    netlink.writeU32(out, start + if (legacy) legacy_states_offset else v2_states_offset, dump.states);
    const sport = start + if (legacy) legacy_sport_offset else v2_sport_offset;
    std.mem.writeInt(u16, out[sport..][0..2], dump.port, .big);
    var length: u32 = start + request_bytes;
    if (dump.filters.len > 0) {
        const bytecode = buildBytecode(out[length + netlink.attribute_header_bytes ..], dump.filters);
        const attribute_bytes: u32 = netlink.attribute_header_bytes + @as(u32, @intCast(bytecode.len));
        netlink.writeU16(out, length, @intCast(attribute_bytes));
        netlink.writeU16(out, length + 2, inet_diag_req_bytecode);
        length += attribute_bytes;
    }
    const message_type = if (legacy) tcpdiag_getsock else netlink.sock_diag_by_family;
    netlink.writeHeader(out, length, message_type, sequence);
    return out[0..length];
}

fn blockBytes(query: *const Query) u32 {
    const address_bytes: u32 = if (query.family == af_inet) 4 else 16;
    const condition: u32 = if (query.wildcard == 1) 0 else op_bytes + hostcond_bytes + address_bytes;
    return 8 + 8 + condition + op_bytes;
}

/// One block per query: S_GE port, S_LE port, S_COND address (unless a
/// wildcard), JMP to the end (accept). A failing test jumps to the next block;
/// in the last block it jumps 4 bytes past the end (reject).
pub fn buildBytecode(out: []u8, queries: []const Query) []u8 {
    assert(queries.len >= 1 and queries.len <= queries_max);
    var total: u32 = 0;
    for (queries) |*query| total += blockBytes(query);
    assert(total <= bytecode_bytes_max and total <= out.len);
    var offset: u32 = 0;
    for (queries, 0..) |*query, index| {
        const block_end = offset + blockBytes(query);
        const fail_target = if (index + 1 == queries.len) total + op_bytes else block_end;
        writeOp(out, offset, bc_s_ge, 8, fail_target - offset);
        writeOp(out, offset + 4, 0, 0, query.port);
        offset += 8;
        writeOp(out, offset, bc_s_le, 8, fail_target - offset);
        writeOp(out, offset + 4, 0, 0, query.port);
        offset += 8;
        if (query.wildcard == 0) {
            const address_bytes: u32 = if (query.family == af_inet) 4 else 16;
            const condition_bytes = op_bytes + hostcond_bytes + address_bytes;
            writeOp(out, offset, bc_s_cond, condition_bytes, fail_target - offset);
            out[offset + 4] = @intCast(query.family);
            out[offset + 5] = @intCast(address_bytes * 8); // prefix_len: the whole address
            netlink.writeU16(out, offset + 6, 0);
            netlink.writeU32(out, offset + 8, @bitCast(@as(i32, -1))); // any port: checked above
            @memcpy(out[offset + 12 ..][0..address_bytes], query.address[0..address_bytes]);
            offset += condition_bytes;
        }
        // JMP always takes `no` at run time; the audit walks `yes`, which must be 4.
        writeOp(out, offset, bc_jmp, op_bytes, total - offset);
        offset += op_bytes;
        assert(offset == block_end);
    }
    assert(offset == total);
    return out[0..total];
}

fn writeOp(out: []u8, offset: u32, code: u8, yes: u32, no: u32) void {
    assert(yes <= std.math.maxInt(u8));
    assert(no <= std.math.maxInt(u16));
    out[offset] = code;
    out[offset + 1] = @intCast(yes);
    netlink.writeU16(out, offset + 2, @intCast(no));
}

// Counting: TCP's side of the shared counting in diag.zig.

const invalid: Status = status.fromErrno(.INVAL);
/// The most keys one socket counts for (matchingKeys).
const keys_max: u32 = 4;

/// An accepted connection; one with inode 0 is still in an accept queue,
/// counted by its listener's rqueue.
fn isAccepted(socket: *const Socket) bool {
    return socket.state == netlink.state_established and socket.inode != 0;
}

/// Query mode: listeners and accepted connections count for every query
/// that matches their local address.
fn queryKeys(socket: *const Socket, keys: []Key) []const Key {
    if (socket.state != netlink.state_listen and !isAccepted(socket)) return keys[0..0];
    return matchingKeys(socket, keys);
}

/// All-listeners mode: an accepted connection belongs to the listener of its
/// exact local address and port, else to its family's wildcard on that port.
fn connectionKeys(socket: *const Socket, keys: []Key) []const Key {
    assert(keys.len >= 2);
    if (!isAccepted(socket)) return keys[0..0];
    keys[0] = .{ .port = socket.port, .family = socket.family, .address = socket.address };
    keys[1] = Key.wildcardOf(socket.family, socket.port);
    return keys[0..2];
}

fn listenerResult(socket: *const Socket) ?Result {
    if (socket.state != netlink.state_listen) return null;
    return .{
        .address = socket.address,
        .family = socket.family,
        .port = socket.port,
        .listeners = 1,
        .active = 0,
        .queued = socket.rqueue,
    };
}

fn countSocket(result: *Result, socket: *const Socket) void {
    if (socket.state == netlink.state_listen) {
        result.listeners +|= 1;
        result.queued +|= socket.rqueue;
    } else if (isAccepted(socket)) {
        result.active +|= 1;
    }
}

const RequestBuffer = [request_bytes_max]u8;

fn listenerRequest(buffer: *RequestBuffer, sequence: u32) []const u8 {
    const dump: Dump = .{ .states = netlink.states_listen, .family = af_unspec, .port = 0, .filters = &.{} };
    return buildRequest(buffer, dump, sequence);
}

fn connectionRequest(buffer: *RequestBuffer, listeners: []const Result, sequence: u32) []const u8 {
    var port_queries: [queries_max]Query = undefined;
    return buildRequest(buffer, connectionDump(listeners, &port_queries), sequence);
}

const counting = diag.Counting(diag.Family(Key, Query, Result, Socket, RequestBuffer){
    .keys_max = keys_max,
    .queries_max = queries_max,
    .message_type = tcpdiag_getsock,
    .order = Key.order,
    .queryKey = Key.ofQuery,
    .resultKey = Key.ofResult,
    .parseMessage = parseMessage,
    .queryKeys = queryKeys,
    .connectionKeys = connectionKeys,
    .listener = listenerResult,
    .count = countSocket,
    .listenerRequest = listenerRequest,
    .connectionRequest = connectionRequest,
});

/// Query mode: results[i] answers queries[i], from one dump of the sockets
/// in `states` (LISTEN, ESTABLISHED or both) that can match.
pub fn queryStats(fd: i32, queries: []const Query, results: []Result, states: u32) Status {
    assert(queries.len == results.len);
    if (queries.len == 0) return ok;
    if (queries.len > queries_max) return invalid;
    if (states == 0 or states & ~states_all != 0) return invalid;
    for (queries) |*query| {
        if (!validQuery(query)) return invalid;
    }
    var order_buffer: [queries_max]u16 = undefined;
    const order = order_buffer[0..queries.len];
    if (!counting.sortQueries(queries, order)) return invalid;
    for (results, queries) |*result, *query| {
        result.* = .{ .address = query.address, .family = query.family, .port = query.port, .listeners = 0, .active = 0, .queued = 0 };
    }
    var counter = counting.QueryCounter{ .queries = queries, .results = results, .order = order };
    var request_buffer: RequestBuffer align(8) = undefined;
    const request = buildRequest(&request_buffer, queryDump(states, queries), netlink.sequenceNext());
    return netlink.dump(fd, request, netlink.requestType(request), &counter);
}

/// All-listeners mode: fills results (sorted by port, family, address) and
/// sets `count`. When results is too small, returns -ENOBUFS with `count` set
/// to an upper bound of the room needed (the LISTEN sockets seen).
pub const allListeners = counting.allListeners;

/// All-listeners mode's dump of the connections the listeners (merged, sorted
/// by port) may have accepted: an accepted socket has its listener's family
/// and port, so the dump skips every connection of another family or port
/// (outbound ones, the client ends of loopback ones). One port: the kernel's
/// port test; several: a filter program of port-only blocks, none past
/// queries_max ports.
fn connectionDump(listeners: []const Result, queries: *[queries_max]Query) Dump {
    assert(listeners.len >= 1);
    var count: usize = 0;
    var families: u2 = 0; // bit 0: AF_INET, bit 1: AF_INET6
    for (listeners, 0..) |*listener, index| {
        assert(listener.family == af_inet or listener.family == af_inet6);
        families |= if (listener.family == af_inet) 1 else 2;
        // Sorted by port: a new port starts where the previous one differs.
        if (index > 0 and listeners[index - 1].port == listener.port) continue;
        if (count < queries_max) {
            queries[count] = .{ .address = @splat(0), .family = af_inet6, .port = listener.port, .wildcard = 1, .reserved = @splat(0) };
        }
        count += 1;
    }
    const family: u16 = switch (families) {
        1 => af_inet,
        2 => af_inet6,
        else => af_unspec,
    };
    var dump: Dump = .{ .states = netlink.states_established, .family = family, .port = 0, .filters = &.{} };
    if (count == 1 and queries[0].port != 0) {
        dump.port = queries[0].port;
    } else if (count <= queries_max) {
        dump.filters = queries[0..count];
    }
    return dump;
}

// Tests.

fn testListeners(results: []Result, families: []const u16, ports: []const u16) []const Result {
    for (results, families, ports) |*result, family, port| {
        result.* = .{ .address = @splat(0), .family = family, .port = port, .listeners = 1, .active = 0, .queued = 0 };
    }
    return results;
}

test "connectionDump: the listeners' families; one port in the id, several in a program" {
    var queries: [queries_max]Query = undefined;
    var results: [3]Result = undefined;
    var dump = connectionDump(testListeners(&results, &.{ af_inet, af_inet, af_inet }, &.{ 80, 80, 443 }), &queries);
    try std.testing.expectEqual(af_inet, dump.family);
    try std.testing.expectEqual(@as(u16, 0), dump.port);
    try std.testing.expectEqual(@as(usize, 2), dump.filters.len);
    try std.testing.expectEqual(@as(u16, 80), dump.filters[0].port);
    try std.testing.expectEqual(@as(u16, 443), dump.filters[1].port);
    try std.testing.expectEqual(@as(u8, 1), dump.filters[1].wildcard);
    try std.testing.expectEqual(netlink.states_established, dump.states);
    dump = connectionDump(testListeners(&results, &.{ af_inet6, af_inet, af_inet6 }, &.{ 80, 80, 80 }), &queries);
    try std.testing.expectEqual(af_unspec, dump.family);
    try std.testing.expectEqual(@as(u16, 80), dump.port);
    try std.testing.expectEqual(@as(usize, 0), dump.filters.len);
    dump = connectionDump(testListeners(results[0..1], &.{af_inet6}, &.{8080}), &queries);
    try std.testing.expectEqual(af_inet6, dump.family);
    try std.testing.expectEqual(@as(u16, 8080), dump.port);
    var many: [queries_max + 1]Result = undefined;
    for (&many, 0..) |*listener, index| {
        listener.* = .{ .address = @splat(0), .family = af_inet, .port = @intCast(index + 1), .listeners = 1, .active = 0, .queued = 0 };
    }
    dump = connectionDump(&many, &queries);
    try std.testing.expectEqual(@as(usize, 0), dump.filters.len);
    try std.testing.expectEqual(@as(u16, 0), dump.port);
    try std.testing.expect(dump.valid());
}

test "queryDump: IPv6 alone or both families; the port in the id when there is one" {
    const v4 = testQuery(af_inet, &loopback_v4, 8080);
    const v6 = testQuery(af_inet6, &loopback_v6, 8080);
    const v6_any = testQuery(af_inet6, &.{}, 8080);
    const other_port = testQuery(af_inet6, &loopback_v6, 9090);
    var dump = queryDump(states_all, &.{ v6, v6_any });
    try std.testing.expectEqual(af_inet6, dump.family);
    try std.testing.expectEqual(@as(u16, 8080), dump.port);
    try std.testing.expectEqual(@as(usize, 0), dump.filters.len);
    dump = queryDump(netlink.states_established, &.{ v6, v4 });
    try std.testing.expectEqual(af_unspec, dump.family);
    try std.testing.expectEqual(@as(u16, 8080), dump.port);
    try std.testing.expectEqual(netlink.states_established, dump.states);
    dump = queryDump(states_all, &.{ v6, other_port });
    try std.testing.expectEqual(af_inet6, dump.family);
    try std.testing.expectEqual(@as(u16, 0), dump.port);
    try std.testing.expectEqual(@as(usize, 2), dump.filters.len);
    dump = queryDump(states_all, &.{testQuery(af_inet, &loopback_v4, 0)});
    try std.testing.expectEqual(@as(u16, 0), dump.port);
    try std.testing.expectEqual(@as(usize, 1), dump.filters.len);
    try std.testing.expect(dump.valid());
}

/// A model of the kernel's inet_diag_bc_audit (net/ipv4/inet_diag.c).
fn testAudit(bytecode: []const u8) bool {
    var offset: usize = 0;
    var remaining: i64 = @intCast(bytecode.len);
    while (remaining > 0) {
        const op = bytecode[offset..];
        if (op.len < op_bytes) return false;
        const code = op[0];
        const yes: i64 = op[1];
        const no: i64 = netlink.readU16(op, 2);
        var min_bytes: i64 = op_bytes;
        switch (code) {
            bc_jmp => {},
            bc_s_ge, bc_s_le => {
                if (remaining < 8) return false;
                min_bytes = 8;
            },
            bc_s_cond => {
                if (remaining < op_bytes + hostcond_bytes) return false;
                const address_bytes: i64 = switch (op[4]) {
                    af_inet => 4,
                    af_inet6 => 16,
                    0 => 0,
                    else => return false,
                };
                if (op[5] > 8 * address_bytes) return false;
                min_bytes = op_bytes + hostcond_bytes + address_bytes;
                if (remaining < min_bytes) return false;
            },
            else => return false,
        }
        if (no < min_bytes or no > remaining + 4 or @mod(no, 4) != 0) return false;
        if (no < remaining and !testValidTarget(bytecode, remaining - no)) return false;
        if (yes < min_bytes or yes > remaining + 4 or @mod(yes, 4) != 0) return false;
        offset += @intCast(@min(yes, remaining));
        remaining -= yes;
    }
    return remaining == 0;
}

/// The kernel's valid_cc: does walking `yes` from the start land `target` bytes before the end?
fn testValidTarget(bytecode: []const u8, target: i64) bool {
    var remaining: i64 = @intCast(bytecode.len);
    var offset: usize = 0;
    while (remaining >= 0) {
        if (target > remaining) return false;
        if (target == remaining) return true;
        const yes = bytecode[offset + 1];
        if (yes < 4 or yes % 4 != 0) return false;
        remaining -= yes;
        offset += yes;
    }
    return false;
}

/// A model of the kernel's inet_diag_bc_run, on a socket's local address and port.
fn testRun(bytecode: []const u8, socket: *const Socket) bool {
    var offset: usize = 0;
    var remaining: i64 = @intCast(bytecode.len);
    var steps: usize = 0;
    while (remaining > 0) : (steps += 1) {
        assert(steps <= bytecode.len / 4);
        const op = bytecode[offset..];
        var yes = true;
        switch (op[0]) {
            bc_jmp => yes = false,
            bc_s_ge => yes = socket.port >= netlink.readU16(op, 6),
            bc_s_le => yes = socket.port <= netlink.readU16(op, 6),
            bc_s_cond => {
                const family: u16 = op[4];
                const prefix_bits = op[5];
                assert(prefix_bits % 8 == 0);
                const prefix_bytes = prefix_bits / 8;
                const wanted = op[12..][0..prefix_bytes];
                if (family != socket.family) {
                    yes = family == af_inet and isV4Mapped(socket) and
                        std.mem.eql(u8, socket.address[12..][0..prefix_bytes], wanted);
                } else {
                    yes = std.mem.eql(u8, socket.address[0..prefix_bytes], wanted);
                }
            },
            else => unreachable,
        }
        const jump: i64 = if (yes) op[1] else netlink.readU16(op, 2);
        remaining -= jump;
        if (remaining > 0) offset += @intCast(jump);
    }
    return remaining == 0;
}

fn testQuery(family: u16, address: []const u8, port: u16) Query {
    var query = std.mem.zeroes(Query);
    query.family = family;
    query.port = port;
    @memcpy(query.address[0..address.len], address);
    query.wildcard = @intFromBool(std.mem.allEqual(u8, &query.address, 0));
    return query;
}

fn testSocket(family: u16, address: []const u8, port: u16, state: u8) Socket {
    var socket = std.mem.zeroes(Socket);
    socket.family = family;
    socket.port = port;
    socket.state = state;
    socket.inode = 1;
    @memcpy(socket.address[0..address.len], address);
    return socket;
}

const loopback_v4 = [4]u8{ 127, 0, 0, 1 };
const loopback_v6 = [16]u8{ 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 };
const mapped_loopback = [16]u8{ 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1 };

test "bytecode passes the kernel audit and filters like the counting rule" {
    const queries = [_]Query{
        testQuery(af_inet, &loopback_v4, 8080),
        testQuery(af_inet6, &.{}, 9090),
        testQuery(af_inet, &.{}, 80),
        testQuery(af_inet6, &loopback_v6, 443),
    };
    var out: [bytecode_bytes_max]u8 = undefined;
    const bytecode = buildBytecode(&out, &queries);
    try std.testing.expect(testAudit(bytecode));
    const cases = [_]struct { socket: Socket, accepted: bool }{
        .{ .socket = testSocket(af_inet, &loopback_v4, 8080, netlink.state_listen), .accepted = true },
        .{ .socket = testSocket(af_inet, &.{ 127, 0, 0, 2 }, 8080, netlink.state_listen), .accepted = false },
        .{ .socket = testSocket(af_inet6, &mapped_loopback, 8080, netlink.state_listen), .accepted = true },
        .{ .socket = testSocket(af_inet, &loopback_v4, 8081, netlink.state_listen), .accepted = false },
        .{ .socket = testSocket(af_inet6, &loopback_v6, 9090, netlink.state_listen), .accepted = true },
        .{ .socket = testSocket(af_inet, &loopback_v4, 80, netlink.state_listen), .accepted = true },
        .{ .socket = testSocket(af_inet6, &loopback_v6, 443, netlink.state_listen), .accepted = true },
        .{ .socket = testSocket(af_inet6, &mapped_loopback, 443, netlink.state_listen), .accepted = false },
        .{ .socket = testSocket(af_inet, &loopback_v4, 443, netlink.state_listen), .accepted = false },
        .{ .socket = testSocket(af_inet, &loopback_v4, 1, netlink.state_listen), .accepted = false },
        .{ .socket = testSocket(af_inet, &loopback_v4, 65535, netlink.state_listen), .accepted = false },
    };
    for (cases) |case| try std.testing.expectEqual(case.accepted, testRun(bytecode, &case.socket));
}

test "bytecode of the largest request passes the audit; jumps fit" {
    var queries: [queries_max]Query = undefined;
    for (&queries, 0..) |*query, index| query.* = testQuery(af_inet6, &loopback_v6, @intCast(index + 1));
    var out: [request_bytes_max]u8 = undefined;
    const largest = buildRequest(&out, queryDump(netlink.states_listen, &queries), 5);
    try std.testing.expectEqual(@as(usize, request_bytes_max - request_legacy_bytes + request_v2_bytes), largest.len);
    const bytecode = largest[netlink.header_bytes + request_v2_bytes + netlink.attribute_header_bytes ..];
    try std.testing.expect(testAudit(bytecode));
    try std.testing.expect(testRun(bytecode, &testSocket(af_inet6, &loopback_v6, queries_max, netlink.state_listen)));
    try std.testing.expect(!testRun(bytecode, &testSocket(af_inet6, &loopback_v6, queries_max + 1, netlink.state_listen)));
    // One IPv4 query: both families, the compat request, a block 12 bytes shorter.
    queries[0] = testQuery(af_inet, &loopback_v4, 1);
    const mixed = buildRequest(&out, queryDump(netlink.states_listen, &queries), 6);
    try std.testing.expectEqual(@as(usize, request_bytes_max - 12), mixed.len);
    try std.testing.expect(testAudit(mixed[netlink.header_bytes + request_legacy_bytes + netlink.attribute_header_bytes ..]));
}

test "request layouts: compat for both families, by-family for one; the port in id.idiag_sport" {
    var out: [request_bytes_max]u8 = undefined;
    const both: Dump = .{ .states = states_all, .family = af_unspec, .port = 0, .filters = &.{} };
    var request = buildRequest(&out, both, 42);
    try std.testing.expectEqual(@as(usize, 76), request.len);
    try std.testing.expectEqual(@as(u32, 76), netlink.readU32(request, 0));
    try std.testing.expectEqual(tcpdiag_getsock, netlink.requestType(request));
    try std.testing.expectEqual(@as(u32, 42), netlink.readU32(request, 8));
    try std.testing.expectEqual(@as(u8, 0), request[16]);
    try std.testing.expectEqual(@as(u32, 0x402), netlink.readU32(request, 16 + 52));
    try std.testing.expectEqualSlices(u8, &.{ 0, 0 }, request[16 + 4 ..][0..2]);
    var one_port = both;
    one_port.port = 8080;
    request = buildRequest(&out, one_port, 43);
    try std.testing.expectEqualSlices(u8, &.{ 0x1f, 0x90 }, request[16 + 4 ..][0..2]);
    try std.testing.expect(std.mem.allEqual(u8, request[16 + 6 .. 16 + 52], 0));
    const v6: Dump = .{ .states = netlink.states_established, .family = af_inet6, .port = 443, .filters = &.{} };
    request = buildRequest(&out, v6, 44);
    try std.testing.expectEqual(@as(usize, 72), request.len);
    try std.testing.expectEqual(netlink.sock_diag_by_family, netlink.requestType(request));
    try std.testing.expectEqual(@as(u8, 10), request[16]);
    try std.testing.expectEqual(ipproto_tcp, request[17]);
    try std.testing.expectEqual(@as(u32, 0x2), netlink.readU32(request, 16 + 4));
    try std.testing.expectEqualSlices(u8, &.{ 0x01, 0xbb }, request[16 + 8 ..][0..2]);
    try std.testing.expect(std.mem.allEqual(u8, request[16 + 10 .. 16 + 56], 0));
}

fn testMessage(out: *[message_bytes]u8, socket: Socket) void {
    @memset(out, 0);
    out[0] = @intCast(socket.family);
    out[1] = socket.state;
    std.mem.writeInt(u16, out[4..6], socket.port, .big);
    out[8..24].* = socket.address;
    netlink.writeU32(out, 56, socket.rqueue);
    netlink.writeU32(out, 68, socket.inode);
}

test "parseMessage: fields, short and unknown-family messages" {
    var bytes: [message_bytes]u8 = undefined;
    var socket = testSocket(af_inet6, &mapped_loopback, 8080, netlink.state_listen);
    socket.rqueue = 3;
    socket.inode = 99;
    testMessage(&bytes, socket);
    const parsed = parseMessage(&bytes).?;
    try std.testing.expectEqual(socket, parsed);
    try std.testing.expect(parseMessage(bytes[0 .. message_bytes - 1]) == null);
    bytes[0] = 1;
    try std.testing.expect(parseMessage(&bytes) == null);
}

test "query counting: exact, wildcard, v4-mapped, embryos, reuseport" {
    const queries = [_]Query{
        testQuery(af_inet, &loopback_v4, 8080),
        testQuery(af_inet, &.{}, 8080),
        testQuery(af_inet6, &.{}, 8080),
        testQuery(af_inet6, &loopback_v6, 8080),
    };
    var results: [queries.len]Result = undefined;
    var order: [queries.len]u16 = undefined;
    try std.testing.expect(counting.sortQueries(&queries, &order));
    for (&results) |*result| result.* = std.mem.zeroes(Result);
    var counter = counting.QueryCounter{ .queries = &queries, .results = &results, .order = &order };
    var bytes: [message_bytes]u8 = undefined;
    const sockets = [_]Socket{
        // Two reuseport listeners on 127.0.0.1 with 2 and 3 queued.
        .{ .family = af_inet, .state = netlink.state_listen, .port = 8080, .address = testSocket(af_inet, &loopback_v4, 0, 0).address, .rqueue = 2, .inode = 1 },
        .{ .family = af_inet, .state = netlink.state_listen, .port = 8080, .address = testSocket(af_inet, &loopback_v4, 0, 0).address, .rqueue = 3, .inode = 2 },
        // A dual-stack listener on [::].
        .{ .family = af_inet6, .state = netlink.state_listen, .port = 8080, .address = @splat(0), .rqueue = 1, .inode = 3 },
        testSocket(af_inet, &loopback_v4, 8080, netlink.state_established),
        testSocket(af_inet6, &mapped_loopback, 8080, netlink.state_established),
        testSocket(af_inet6, &loopback_v6, 8080, netlink.state_established),
        // Still in an accept queue: not active.
        .{ .family = af_inet, .state = netlink.state_established, .port = 8080, .address = testSocket(af_inet, &loopback_v4, 0, 0).address, .rqueue = 0, .inode = 0 },
    };
    for (sockets) |socket| {
        testMessage(&bytes, socket);
        try std.testing.expectEqual(ok, counter.message(&bytes));
    }
    // 127.0.0.1:8080: 2 listeners, queued 5, active: the v4 one and the v4-mapped one.
    try std.testing.expectEqual(@as(u32, 2), results[0].listeners);
    try std.testing.expectEqual(@as(u64, 5), results[0].queued);
    try std.testing.expectEqual(@as(u64, 2), results[0].active);
    // 0.0.0.0:8080: the same listeners (port-wide within AF_INET and v4-mapped).
    try std.testing.expectEqual(@as(u32, 2), results[1].listeners);
    try std.testing.expectEqual(@as(u64, 2), results[1].active);
    // [::]:8080: the [::] listener; both AF_INET6 connections.
    try std.testing.expectEqual(@as(u32, 1), results[2].listeners);
    try std.testing.expectEqual(@as(u64, 1), results[2].queued);
    try std.testing.expectEqual(@as(u64, 2), results[2].active);
    // [::1]:8080: no listener with that address.
    try std.testing.expectEqual(@as(u32, 0), results[3].listeners);
    try std.testing.expectEqual(@as(u64, 1), results[3].active);
    try std.testing.expectEqual(netlink.bad_message, counter.message(bytes[0..10]));
}

test "duplicate and invalid queries are refused" {
    const queries = [_]Query{ testQuery(af_inet, &loopback_v4, 1), testQuery(af_inet, &loopback_v4, 1) };
    var order: [2]u16 = undefined;
    try std.testing.expect(!counting.sortQueries(&queries, &order));
    var bad = testQuery(af_inet, &loopback_v4, 1);
    bad.wildcard = 1;
    try std.testing.expect(!validQuery(&bad));
    bad = testQuery(af_inet, &mapped_loopback, 1);
    try std.testing.expect(!validQuery(&bad));
    bad = testQuery(7, &loopback_v4, 1);
    try std.testing.expect(!validQuery(&bad));
    var results: [2]Result = undefined;
    try std.testing.expectEqual(invalid, queryStats(-1, &queries, &results, states_all));
    const one = queries[0..1];
    try std.testing.expectEqual(invalid, queryStats(-1, one, results[0..1], 0));
    try std.testing.expectEqual(invalid, queryStats(-1, one, results[0..1], 1 << 3));
    try std.testing.expectEqual(status.fromErrno(.BADF), queryStats(-1, one, results[0..1], netlink.states_established));
}

test "all-listeners: merge and attribution to exact, then wildcard" {
    var results: [4]Result = undefined;
    var collector = counting.ListenerCollector{ .results = results[0..3] };
    var bytes: [message_bytes]u8 = undefined;
    const listeners = [_]Socket{
        testSocket(af_inet, &.{}, 80, netlink.state_listen),
        testSocket(af_inet, &loopback_v4, 80, netlink.state_listen),
        testSocket(af_inet, &.{}, 80, netlink.state_listen),
        testSocket(af_inet6, &.{}, 80, netlink.state_listen),
    };
    for (listeners) |socket| {
        testMessage(&bytes, socket);
        try std.testing.expectEqual(ok, collector.message(&bytes));
    }
    try std.testing.expectEqual(@as(u64, 4), collector.seen);
    try std.testing.expectEqual(@as(usize, 3), collector.count);
    collector = .{ .results = &results };
    for (listeners) |socket| {
        testMessage(&bytes, socket);
        try std.testing.expectEqual(ok, collector.message(&bytes));
    }
    const unique = counting.mergeListeners(results[0..collector.count]);
    try std.testing.expectEqual(@as(usize, 3), unique);
    var attributor = counting.ConnectionAttributor{ .results = results[0..unique] };
    const connections = [_]Socket{
        testSocket(af_inet, &loopback_v4, 80, netlink.state_established),
        testSocket(af_inet, &.{ 10, 0, 0, 1 }, 80, netlink.state_established),
        testSocket(af_inet6, &mapped_loopback, 80, netlink.state_established),
        testSocket(af_inet6, &loopback_v6, 81, netlink.state_established),
    };
    for (connections) |socket| {
        testMessage(&bytes, socket);
        try std.testing.expectEqual(ok, attributor.message(&bytes));
    }
    // Sorted: (80, AF_INET, 0.0.0.0), (80, AF_INET, 127.0.0.1), (80, AF_INET6, ::).
    try std.testing.expectEqual(@as(u32, 2), results[0].listeners);
    try std.testing.expectEqual(@as(u64, 1), results[0].active);
    try std.testing.expectEqual(@as(u64, 1), results[1].active);
    try std.testing.expectEqual(@as(u16, af_inet6), results[2].family);
    try std.testing.expectEqual(@as(u64, 1), results[2].active);
}

test "fuzz: random messages and queries never read out of bounds" {
    try std.testing.fuzz({}, fuzzCounting, .{});
}

fn fuzzCounting(_: void, smith: *std.testing.Smith) anyerror!void {
    var queries: [4]Query = undefined;
    for (&queries, 0..) |*query, index| {
        var address: [16]u8 = undefined;
        smith.bytes(&address);
        const family = if (address[0] & 1 == 0) af_inet else af_inet6;
        const zero = address[1] & 1 == 0;
        query.* = testQuery(family, if (zero) &.{} else if (family == af_inet) address[0..4] else &address, @intCast(index));
    }
    var out: [bytecode_bytes_max]u8 = undefined;
    const bytecode = buildBytecode(&out, &queries);
    try std.testing.expect(testAudit(bytecode));
    var payload: [128]u8 = undefined;
    const length = smith.slice(&payload);
    var results: [queries.len]Result = undefined;
    var order: [queries.len]u16 = undefined;
    try std.testing.expect(counting.sortQueries(&queries, &order));
    var counter = counting.QueryCounter{ .queries = &queries, .results = &results, .order = &order };
    for (&results) |*result| result.* = std.mem.zeroes(Result);
    _ = counter.message(payload[0..length]);
    var listener_results: [2]Result = undefined;
    var collector = counting.ListenerCollector{ .results = &listener_results };
    _ = collector.message(payload[0..length]);
    if (parseMessage(payload[0..length])) |socket| try std.testing.expect(socket.family == af_inet or socket.family == af_inet6);
}
