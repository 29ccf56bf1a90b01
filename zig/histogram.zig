//! A log2 histogram in shared memory, updated lock-free by every process.
//!
//! Counters, each on its own cache line (`stride` bytes apart): count, sum,
//! sum of squares (for the standard deviation), min (stored complemented so
//! that zeroed memory means "no sample"), max, then `buckets` bucket counters. Bucket k holds the values whose bit length
//! is k: 0 in bucket 0, 1 in bucket 1, 2..3 in bucket 2, 4..7 in bucket 3, ...;
//! the last bucket also takes everything larger.
const std = @import("std");
const assert = std.debug.assert;
const counters = @import("counters.zig");

pub const buckets_max: u32 = 65;
pub const fields_before_buckets: u32 = 5;

/// Where a histogram lives; built once per process by the caller.
pub const Histogram = extern struct {
    first: ?[*]u8,
    stride: u64,
    buckets: u64,

    fn field(histogram: *const Histogram, index: u64) *u64 {
        assert(index < fields_before_buckets + histogram.buckets);
        return @ptrCast(@alignCast(histogram.first.? + index * histogram.stride));
    }
};

pub fn valid(histogram: *const Histogram) bool {
    return histogram.first != null and histogram.buckets >= 2 and histogram.buckets <= buckets_max and
        histogram.stride >= @sizeOf(u64) and histogram.stride % @sizeOf(u64) == 0;
}

pub fn bucketOf(value: u64, buckets: u64) u64 {
    assert(buckets >= 2 and buckets <= buckets_max);
    const bit_length: u64 = 64 - @as(u64, @clz(value));
    return @min(bit_length, buckets - 1);
}

pub fn observe(histogram: *const Histogram, value: u64) void {
    assert(valid(histogram));
    _ = counters.add(histogram.field(0), 1);
    _ = counters.add(histogram.field(1), value);
    _ = counters.add(histogram.field(2), value *% value);
    _ = @atomicRmw(u64, histogram.field(3), .Max, ~value, .seq_cst);
    _ = @atomicRmw(u64, histogram.field(4), .Max, value, .seq_cst);
    _ = counters.add(histogram.field(fields_before_buckets + bucketOf(value, histogram.buckets)), 1);
}

const testing = std.testing;

test "bucketOf: bit length, capped at the last bucket" {
    try testing.expectEqual(@as(u64, 0), bucketOf(0, 8));
    try testing.expectEqual(@as(u64, 1), bucketOf(1, 8));
    try testing.expectEqual(@as(u64, 2), bucketOf(2, 8));
    try testing.expectEqual(@as(u64, 2), bucketOf(3, 8));
    try testing.expectEqual(@as(u64, 3), bucketOf(4, 8));
    try testing.expectEqual(@as(u64, 7), bucketOf(1 << 40, 8));
    try testing.expectEqual(@as(u64, 64), bucketOf(std.math.maxInt(u64), 65));
}

test "observe keeps count, sum, min, max and buckets" {
    var slots: [13]u64 = @splat(0);
    const histogram = Histogram{ .first = @ptrCast(&slots), .stride = 8, .buckets = 8 };
    for ([_]u64{ 5, 10, 100, 1000, 0 }) |value| observe(&histogram, value);
    try testing.expectEqual(@as(u64, 5), slots[0]);
    try testing.expectEqual(@as(u64, 1115), slots[1]);
    try testing.expectEqual(@as(u64, 25 + 100 + 10_000 + 1_000_000), slots[2]);
    try testing.expectEqual(@as(u64, 0), ~slots[3]);
    try testing.expectEqual(@as(u64, 1000), slots[4]);
    try testing.expectEqual(@as(u64, 1), slots[5 + 0]);
    try testing.expectEqual(@as(u64, 1), slots[5 + 3]);
    try testing.expectEqual(@as(u64, 1), slots[5 + 4]);
    try testing.expectEqual(@as(u64, 2), slots[5 + 7]);
}
