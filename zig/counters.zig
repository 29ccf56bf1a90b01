//! Atomic counter operations. Every function takes a pointer to one counter
//! slot that the caller derived from a mapped segment; wrapping is modulo 2**64.
const std = @import("std");
const assert = std.debug.assert;

pub fn add(counter: *u64, delta: u64) u64 {
    assert(@intFromPtr(counter) % @alignOf(u64) == 0);
    return @atomicRmw(u64, counter, .Add, delta, .seq_cst) +% delta;
}

pub fn sub(counter: *u64, delta: u64) u64 {
    assert(@intFromPtr(counter) % @alignOf(u64) == 0);
    return @atomicRmw(u64, counter, .Sub, delta, .seq_cst) -% delta;
}

pub fn load(counter: *const u64) u64 {
    return @atomicLoad(u64, counter, .seq_cst);
}

pub fn store(counter: *u64, value: u64) void {
    @atomicStore(u64, counter, value, .seq_cst);
}

test "add and sub wrap modulo 2**64 and return the new value" {
    var slot: u64 = 0;
    try std.testing.expectEqual(@as(u64, 5), add(&slot, 5));
    try std.testing.expectEqual(std.math.maxInt(u64), sub(&slot, 6));
    try std.testing.expectEqual(@as(u64, 0), add(&slot, 1));
    store(&slot, std.math.maxInt(u64));
    try std.testing.expectEqual(@as(u64, 0), add(&slot, 1));
    try std.testing.expectEqual(@as(u64, 0), load(&slot));
}
