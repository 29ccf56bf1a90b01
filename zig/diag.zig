//! The listener counting shared by inet_diag.zig and unix_diag.zig, generic
//! over what differs between the socket families (see `Family`): the binary
//! search over sorted keys, the sorting of the queries, query-mode counting,
//! and the all-listeners mode (collect the LISTEN sockets, merge equal keys,
//! then attribute the accepted connections to them).
//!
//! All-listeners mode dumps the listeners first, in their own dump, so the
//! attribution does not depend on the kernel's dump order.
const std = @import("std");
const assert = std.debug.assert;
const netlink = @import("netlink.zig");
const status = @import("status.zig");

const Status = status.Status;
const ok = status.ok;

/// The steps of a binary search over at most 2^64 items.
const search_steps_max: u32 = 64;

/// Binary search over `count` items sorted by `order`, without duplicates;
/// `keyAt(context, i)` gives item i's key. Returns the position of `key`.
pub fn search(
    comptime Key: type,
    comptime order: fn (Key, Key) std.math.Order,
    count: usize,
    context: anytype,
    key: Key,
    comptime keyAt: fn (@TypeOf(context), usize) Key,
) ?usize {
    var low: usize = 0;
    var high: usize = count;
    var steps: u32 = 0;
    while (low < high) : (steps += 1) {
        assert(steps < search_steps_max);
        assert(high <= count);
        const middle = low + (high - low) / 2;
        switch (order(key, keyAt(context, middle))) {
            .eq => return middle,
            .gt => low = middle + 1,
            .lt => high = middle,
        }
    }
    return null;
}

/// What a socket family supplies to `Counting`: its types, and functions from
/// one to another. `ResultType` must have the counts `listeners: u32`,
/// `active: u64` and `queued: u64`, which the merge sums.
pub fn Family(
    comptime KeyType: type,
    comptime QueryType: type,
    comptime ResultType: type,
    comptime SocketType: type,
    comptime RequestBufferType: type,
) type {
    comptime {
        assert(@FieldType(ResultType, "listeners") == u32);
        assert(@FieldType(ResultType, "active") == u64);
        assert(@FieldType(ResultType, "queued") == u64);
    }
    return struct {
        pub const Key = KeyType;
        pub const Query = QueryType;
        pub const Result = ResultType;
        pub const Socket = SocketType;
        /// Room for one dump request.
        pub const RequestBuffer = RequestBufferType;

        /// The most keys `queryKeys` or `connectionKeys` returns for one socket.
        keys_max: u32,
        /// The most queries per call; query indexes are u16.
        queries_max: u32,
        /// The nlmsg_type of the listener dump's request and replies. Each dump
        /// is read with its own request's type: a family may ask for its
        /// connections with another request layout.
        message_type: u16,
        order: fn (KeyType, KeyType) std.math.Order,
        queryKey: fn (*const QueryType) KeyType,
        resultKey: fn (*const ResultType) KeyType,
        /// Null when the message is malformed: the dump fails with -EBADMSG.
        parseMessage: fn ([]const u8) ?SocketType,
        /// Query mode: the keys of the queries that count the socket (into a
        /// buffer of keys_max); empty when it counts for none.
        queryKeys: fn (*const SocketType, []KeyType) []const KeyType,
        /// All-listeners mode: the keys of the listeners that an accepted
        /// connection may belong to, best first; empty when it is not one.
        connectionKeys: fn (*const SocketType, []KeyType) []const KeyType,
        /// All-listeners mode: a LISTEN socket's own result; null when the
        /// socket is not a listener to report.
        listener: fn (*const SocketType) ?ResultType,
        /// Adds the socket to the counts of a result it belongs to.
        count: fn (*ResultType, *const SocketType) void,
        /// The dump of the LISTEN sockets.
        listenerRequest: fn (*RequestBufferType, u32) []const u8,
        /// The dump of the connections that the listeners (merged, sorted) may have accepted.
        connectionRequest: fn (*RequestBufferType, []const ResultType, u32) []const u8,
    };
}

/// The counting for one family; `family` is a `Family(...)` value.
pub fn Counting(comptime family: anytype) type {
    const F = @TypeOf(family);
    comptime {
        assert(family.keys_max >= 1);
        assert(family.queries_max >= 1 and family.queries_max <= std.math.maxInt(u16) + 1);
        assert(family.message_type > netlink.type_overrun);
    }
    return struct {
        const Key = F.Key;
        const Query = F.Query;
        const Result = F.Result;
        const Socket = F.Socket;

        fn less(a: Key, b: Key) bool {
            return family.order(a, b) == .lt;
        }

        fn equal(a: Key, b: Key) bool {
            return family.order(a, b) == .eq;
        }

        /// Sorts the query indexes by key; false when two queries are equal.
        pub fn sortQueries(queries: []const Query, order: []u16) bool {
            assert(order.len == queries.len);
            assert(queries.len <= family.queries_max);
            if (queries.len == 0) return true;
            for (order, 0..) |*slot, index| slot.* = @intCast(index);
            std.sort.pdq(u16, order, queries, struct {
                fn lessQuery(context: []const Query, a: u16, b: u16) bool {
                    return less(family.queryKey(&context[a]), family.queryKey(&context[b]));
                }
            }.lessQuery);
            for (1..order.len) |position| {
                const previous = family.queryKey(&queries[order[position - 1]]);
                if (equal(previous, family.queryKey(&queries[order[position]]))) return false;
            }
            return true;
        }

        /// Query mode: counts into results[i] for queries[i], found through
        /// `order`, the query indexes sorted by key (sortQueries).
        pub const QueryCounter = struct {
            queries: []const Query,
            results: []Result,
            order: []const u16,

            fn keyAt(counter: *const QueryCounter, position: usize) Key {
                return family.queryKey(&counter.queries[counter.order[position]]);
            }

            pub fn message(counter: *QueryCounter, payload: []const u8) Status {
                assert(counter.queries.len == counter.results.len);
                assert(counter.order.len == counter.queries.len);
                const socket = family.parseMessage(payload) orelse return netlink.bad_message;
                var keys: [family.keys_max]Key = undefined;
                const matching = family.queryKeys(&socket, &keys);
                assert(matching.len <= keys.len);
                const view: *const QueryCounter = counter;
                for (matching) |key| {
                    const position = search(Key, family.order, counter.order.len, view, key, keyAt) orelse continue;
                    family.count(&counter.results[counter.order[position]], &socket);
                }
                return ok;
            }
        };

        /// All-listeners mode, first pass: one result per LISTEN socket.
        pub const ListenerCollector = struct {
            results: []Result,
            count: usize = 0,
            /// LISTEN sockets seen, including those that did not fit in `results`.
            seen: u64 = 0,

            pub fn message(collector: *ListenerCollector, payload: []const u8) Status {
                assert(collector.count <= collector.results.len);
                assert(collector.count <= collector.seen);
                const socket = family.parseMessage(payload) orelse return netlink.bad_message;
                const result = family.listener(&socket) orelse return ok;
                collector.seen += 1;
                // Out of room: keep draining the dump to learn how much room is needed.
                if (collector.count == collector.results.len) return ok;
                collector.results[collector.count] = result;
                collector.count += 1;
                return ok;
            }
        };

        /// All-listeners mode, second pass: accepted connections to their
        /// listener, the first of the socket's connection keys found.
        pub const ConnectionAttributor = struct {
            /// Sorted by key, without duplicates (mergeListeners).
            results: []Result,

            fn keyAt(results: []Result, position: usize) Key {
                return family.resultKey(&results[position]);
            }

            pub fn message(attributor: *ConnectionAttributor, payload: []const u8) Status {
                const socket = family.parseMessage(payload) orelse return netlink.bad_message;
                var keys: [family.keys_max]Key = undefined;
                const candidates = family.connectionKeys(&socket, &keys);
                assert(candidates.len <= keys.len);
                for (candidates) |key| {
                    const position = search(Key, family.order, attributor.results.len, attributor.results, key, keyAt) orelse continue;
                    family.count(&attributor.results[position], &socket);
                    return ok;
                }
                return ok;
            }
        };

        /// Sorts results by key and merges equal keys; returns the unique count.
        pub fn mergeListeners(results: []Result) usize {
            std.sort.pdq(Result, results, {}, struct {
                fn lessResult(_: void, a: Result, b: Result) bool {
                    return less(family.resultKey(&a), family.resultKey(&b));
                }
            }.lessResult);
            var unique: usize = 0;
            for (results) |result| {
                if (unique > 0 and equal(family.resultKey(&results[unique - 1]), family.resultKey(&result))) {
                    results[unique - 1].listeners +|= result.listeners;
                    results[unique - 1].queued +|= result.queued;
                    results[unique - 1].active +|= result.active;
                } else {
                    results[unique] = result;
                    unique += 1;
                }
            }
            assert(unique <= results.len);
            assert(results.len == 0 or unique >= 1);
            return unique;
        }

        /// All-listeners mode: fills results (sorted by key) and sets `count`.
        /// When results is too small, returns -ENOBUFS with `count` set to an
        /// upper bound of the room needed (the LISTEN sockets seen).
        pub fn allListeners(fd: i32, results: []Result, count: *u64) Status {
            count.* = 0;
            var request_buffer: F.RequestBuffer align(8) = undefined;
            var collector = ListenerCollector{ .results = results };
            const listeners = family.listenerRequest(&request_buffer, netlink.sequenceNext());
            assert(netlink.requestType(listeners) == family.message_type);
            const listed = netlink.dump(fd, listeners, family.message_type, &collector);
            if (listed != ok) return listed;
            if (collector.seen > results.len) {
                count.* = collector.seen;
                return status.fromErrno(.NOBUFS);
            }
            assert(collector.count == collector.seen);
            const unique = mergeListeners(results[0..collector.count]);
            if (unique == 0) return ok; // no listener: no connection to attribute
            var attributor = ConnectionAttributor{ .results = results[0..unique] };
            const connections = family.connectionRequest(&request_buffer, results[0..unique], netlink.sequenceNext());
            const attributed = netlink.dump(fd, connections, netlink.requestType(connections), &attributor);
            if (attributed != ok) return attributed;
            count.* = unique;
            return ok;
        }
    };
}

// Tests: a toy family whose key is a port, 0 being the wildcard. A message is
// 8 bytes: state, inode, port (u16), rqueue (u32), in native byte order.

const TestQuery = struct { port: u16 };

const TestResult = struct {
    port: u16,
    listeners: u32 = 0,
    active: u64 = 0,
    queued: u64 = 0,
};

const TestSocket = struct { state: u8, inode: u8, port: u16, rqueue: u32 };

const test_message_bytes: u32 = 8;
const test_message_type: u16 = netlink.sock_diag_by_family;

fn testOrder(a: u16, b: u16) std.math.Order {
    return std.math.order(a, b);
}

fn testQueryKey(query: *const TestQuery) u16 {
    return query.port;
}

fn testResultKey(result: *const TestResult) u16 {
    return result.port;
}

fn testParse(payload: []const u8) ?TestSocket {
    if (payload.len != test_message_bytes) return null;
    return .{ .state = payload[0], .inode = payload[1], .port = netlink.readU16(payload, 2), .rqueue = netlink.readU32(payload, 4) };
}

fn testAccepted(socket: *const TestSocket) bool {
    return socket.state == netlink.state_established and socket.inode != 0;
}

/// The socket's port, then the wildcard (unless that is its port).
fn testPortKeys(socket: *const TestSocket, keys: []u16) []const u16 {
    assert(keys.len >= 2);
    keys[0] = socket.port;
    if (socket.port == 0) return keys[0..1];
    keys[1] = 0;
    return keys[0..2];
}

fn testQueryKeys(socket: *const TestSocket, keys: []u16) []const u16 {
    if (socket.state != netlink.state_listen and !testAccepted(socket)) return keys[0..0];
    return testPortKeys(socket, keys);
}

fn testConnectionKeys(socket: *const TestSocket, keys: []u16) []const u16 {
    if (!testAccepted(socket)) return keys[0..0];
    return testPortKeys(socket, keys);
}

fn testListener(socket: *const TestSocket) ?TestResult {
    if (socket.state != netlink.state_listen) return null;
    return .{ .port = socket.port, .listeners = 1, .queued = socket.rqueue };
}

fn testCount(result: *TestResult, socket: *const TestSocket) void {
    if (socket.state == netlink.state_listen) {
        result.listeners +|= 1;
        result.queued +|= socket.rqueue;
    } else if (testAccepted(socket)) {
        result.active +|= 1;
    }
}

const TestRequestBuffer = [netlink.header_bytes]u8;

fn testListenerRequest(buffer: *TestRequestBuffer, sequence: u32) []const u8 {
    netlink.writeHeader(buffer, buffer.len, test_message_type, sequence);
    return buffer;
}

fn testConnectionRequest(buffer: *TestRequestBuffer, listeners: []const TestResult, sequence: u32) []const u8 {
    assert(listeners.len >= 1);
    return testListenerRequest(buffer, sequence);
}

const TestFamily = Family(u16, TestQuery, TestResult, TestSocket, TestRequestBuffer);
const test_counting = Counting(TestFamily{
    .keys_max = 2,
    .queries_max = 8,
    .message_type = test_message_type,
    .order = testOrder,
    .queryKey = testQueryKey,
    .resultKey = testResultKey,
    .parseMessage = testParse,
    .queryKeys = testQueryKeys,
    .connectionKeys = testConnectionKeys,
    .listener = testListener,
    .count = testCount,
    .listenerRequest = testListenerRequest,
    .connectionRequest = testConnectionRequest,
});

fn testMessage(out: *[test_message_bytes]u8, state: u8, inode: u8, port: u16, rqueue: u32) []const u8 {
    out[0] = state;
    out[1] = inode;
    netlink.writeU16(out, 2, port);
    netlink.writeU32(out, 4, rqueue);
    return out;
}

fn testKeyAt(keys: []const u16, position: usize) u16 {
    return keys[position];
}

fn testSearch(keys: []const u16, key: u16) ?usize {
    return search(u16, testOrder, keys.len, keys, key, testKeyAt);
}

test "search: every key found at its position, gaps and ends missing" {
    const keys = [_]u16{ 2, 4, 6, 8, 10, 12, 14 };
    for (keys, 0..) |key, position| {
        try std.testing.expectEqual(@as(?usize, position), testSearch(&keys, key));
        try std.testing.expectEqual(@as(?usize, position), testSearch(keys[0 .. position + 1], key));
        try std.testing.expectEqual(@as(?usize, null), testSearch(&keys, key + 1));
    }
    try std.testing.expectEqual(@as(?usize, null), testSearch(&keys, 0));
    try std.testing.expectEqual(@as(?usize, null), testSearch(&.{}, 2));
}

test "sortQueries: indexes by key; equal queries refused" {
    const queries = [_]TestQuery{ .{ .port = 30 }, .{ .port = 10 }, .{ .port = 20 } };
    var order: [queries.len]u16 = undefined;
    try std.testing.expect(test_counting.sortQueries(&queries, &order));
    try std.testing.expectEqualSlices(u16, &.{ 1, 2, 0 }, &order);
    const duplicates = [_]TestQuery{ .{ .port = 10 }, .{ .port = 20 }, .{ .port = 10 } };
    try std.testing.expect(!test_counting.sortQueries(&duplicates, &order));
    try std.testing.expect(test_counting.sortQueries(&.{}, order[0..0]));
}

test "QueryCounter: a socket counts for every query it matches; malformed is -EBADMSG" {
    const queries = [_]TestQuery{ .{ .port = 80 }, .{ .port = 0 }, .{ .port = 443 } };
    var results: [queries.len]TestResult = undefined;
    for (&results, queries) |*result, query| result.* = .{ .port = query.port };
    var order: [queries.len]u16 = undefined;
    try std.testing.expect(test_counting.sortQueries(&queries, &order));
    var counter = test_counting.QueryCounter{ .queries = &queries, .results = &results, .order = &order };
    var bytes: [test_message_bytes]u8 = undefined;
    try std.testing.expectEqual(ok, counter.message(testMessage(&bytes, netlink.state_listen, 1, 80, 3)));
    try std.testing.expectEqual(ok, counter.message(testMessage(&bytes, netlink.state_established, 2, 80, 0)));
    // In an accept queue (no inode), of another state, on a port not asked for.
    try std.testing.expectEqual(ok, counter.message(testMessage(&bytes, netlink.state_established, 0, 80, 0)));
    try std.testing.expectEqual(ok, counter.message(testMessage(&bytes, 7, 3, 80, 0)));
    try std.testing.expectEqual(ok, counter.message(testMessage(&bytes, netlink.state_listen, 4, 8080, 1)));
    try std.testing.expectEqual(TestResult{ .port = 80, .listeners = 1, .active = 1, .queued = 3 }, results[0]);
    try std.testing.expectEqual(TestResult{ .port = 0, .listeners = 2, .active = 1, .queued = 4 }, results[1]);
    try std.testing.expectEqual(TestResult{ .port = 443 }, results[2]);
    try std.testing.expectEqual(netlink.bad_message, counter.message(bytes[0..7]));
}

test "ListenerCollector: listeners only; those past the room are seen, not stored" {
    var results: [2]TestResult = undefined;
    var collector = test_counting.ListenerCollector{ .results = &results };
    var bytes: [test_message_bytes]u8 = undefined;
    try std.testing.expectEqual(ok, collector.message(testMessage(&bytes, netlink.state_listen, 1, 80, 2)));
    try std.testing.expectEqual(ok, collector.message(testMessage(&bytes, netlink.state_established, 2, 80, 0)));
    try std.testing.expectEqual(ok, collector.message(testMessage(&bytes, netlink.state_listen, 3, 81, 0)));
    try std.testing.expectEqual(ok, collector.message(testMessage(&bytes, netlink.state_listen, 4, 82, 0)));
    try std.testing.expectEqual(@as(usize, 2), collector.count);
    try std.testing.expectEqual(@as(u64, 3), collector.seen);
    try std.testing.expectEqual(TestResult{ .port = 80, .listeners = 1, .queued = 2 }, results[0]);
    try std.testing.expectEqual(@as(u16, 81), results[1].port);
    try std.testing.expectEqual(netlink.bad_message, collector.message(&.{}));
}

test "mergeListeners: sorted by key, equal keys summed" {
    var results = [_]TestResult{
        .{ .port = 9, .listeners = 1, .queued = 1 },
        .{ .port = 3, .listeners = 1, .queued = 2, .active = 5 },
        .{ .port = 9, .listeners = 2, .queued = 4, .active = 1 },
        .{ .port = 3, .listeners = std.math.maxInt(u32), .queued = 0 },
    };
    const unique = test_counting.mergeListeners(&results);
    try std.testing.expectEqual(@as(usize, 2), unique);
    try std.testing.expectEqual(TestResult{ .port = 3, .listeners = std.math.maxInt(u32), .queued = 2, .active = 5 }, results[0]);
    try std.testing.expectEqual(TestResult{ .port = 9, .listeners = 3, .queued = 5, .active = 1 }, results[1]);
    try std.testing.expectEqual(@as(usize, 0), test_counting.mergeListeners(results[0..0]));
}

test "ConnectionAttributor: the first key found wins; others are not counted" {
    var results = [_]TestResult{ .{ .port = 0 }, .{ .port = 80 } };
    var attributor = test_counting.ConnectionAttributor{ .results = &results };
    var bytes: [test_message_bytes]u8 = undefined;
    try std.testing.expectEqual(ok, attributor.message(testMessage(&bytes, netlink.state_established, 1, 80, 0)));
    try std.testing.expectEqual(ok, attributor.message(testMessage(&bytes, netlink.state_established, 1, 81, 0)));
    try std.testing.expectEqual(ok, attributor.message(testMessage(&bytes, netlink.state_established, 0, 80, 0)));
    try std.testing.expectEqual(ok, attributor.message(testMessage(&bytes, netlink.state_listen, 1, 80, 9)));
    try std.testing.expectEqual(TestResult{ .port = 0, .active = 1 }, results[0]);
    try std.testing.expectEqual(TestResult{ .port = 80, .active = 1 }, results[1]);
    var none = test_counting.ConnectionAttributor{ .results = &.{} };
    try std.testing.expectEqual(ok, none.message(testMessage(&bytes, netlink.state_established, 1, 80, 0)));
    try std.testing.expectEqual(netlink.bad_message, none.message(bytes[1..]));
}

test "allListeners: a bad fd fails before any dump, count 0" {
    var results: [1]TestResult = undefined;
    var count: u64 = 7;
    try std.testing.expectEqual(status.fromErrno(.BADF), test_counting.allListeners(-1, &results, &count));
    try std.testing.expectEqual(@as(u64, 0), count);
}

test "fuzz: search agrees with a linear scan" {
    try std.testing.fuzz({}, fuzzSearch, .{});
}

fn fuzzSearch(_: void, smith: *std.testing.Smith) anyerror!void {
    var keys: [64]u16 = undefined;
    for (&keys) |*key| key.* = smith.value(u16);
    const count = smith.index(keys.len + 1);
    std.sort.pdq(u16, keys[0..count], {}, std.sort.asc(u16));
    var unique: usize = 0;
    for (keys[0..count]) |key| {
        if (unique > 0 and keys[unique - 1] == key) continue;
        keys[unique] = key;
        unique += 1;
    }
    const sorted = keys[0..unique];
    const wanted = smith.value(u16);
    const found = testSearch(sorted, wanted);
    const expected = std.mem.findScalar(u16, sorted, wanted);
    try std.testing.expectEqual(expected, found);
    for (sorted, 0..) |key, position| try std.testing.expectEqual(@as(?usize, position), testSearch(sorted, key));
}
