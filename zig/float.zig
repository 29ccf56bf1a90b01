//! Float values in shared memory for raindrops.metrics: atomic f64 words and
//! histograms with explicit upper bounds, updated lock-free by every process.
//!
//! A value is one u64 word of a segment (its own cache line) holding the bits
//! of an f64. Adding is `@atomicRmw(f64, .Add)`, which the compiler turns into
//! a compare-and-swap loop (x86_64 and aarch64 have no atomic float add).
//!
//! Folding a dead process's gauge into a kept maximum or minimum needs an
//! atomic max of floats that works on zeroed memory: an f64 is mapped to an
//! order-preserving u64 key (`orderedKey`), and a maximum is an integer
//! `.Max` of keys, where 0 means "nothing folded yet" (no float maps to 0:
//! NaNs are made canonical first). A minimum is kept as the maximum of the
//! complemented key.
const std = @import("std");
const assert = std.debug.assert;

const sign_bit: u64 = 1 << 63;
const canonical_nan: u64 = 0x7ff8_0000_0000_0000;

/// Buckets of a histogram are at most this many (the last one is +Inf).
pub const buckets_max: u64 = 1024;
/// Bisection steps over `buckets_max` bounds.
const search_steps_max: u32 = 11;

comptime {
    assert(@as(u64, 1) << (search_steps_max - 1) >= buckets_max);
}

fn floatPointer(word: *u64) *f64 {
    assert(@intFromPtr(word) % @alignOf(u64) == 0);
    return @ptrCast(word);
}

/// Adds `delta` to the f64 in `word` atomically; returns the new value.
pub fn add(word: *u64, delta: f64) f64 {
    return @atomicRmw(f64, floatPointer(word), .Add, delta, .seq_cst) + delta;
}

pub fn load(word: *const u64) f64 {
    return @bitCast(@atomicLoad(u64, word, .seq_cst));
}

pub fn store(word: *u64, value: f64) void {
    @atomicStore(u64, word, @bitCast(value), .seq_cst);
}

/// A u64 that orders like the f64 `value` (-Inf < ... < -0 < +0 < ... < +Inf < NaN); never 0.
pub fn orderedKey(value: f64) u64 {
    const raw: u64 = @bitCast(value);
    const bits = if (std.math.isNan(value)) canonical_nan else raw;
    const key = if (bits & sign_bit != 0) ~bits else bits | sign_bit;
    assert(key != 0);
    return key;
}

/// The f64 whose orderedKey is `key`; `key` must not be 0 (nothing folded).
pub fn fromOrderedKey(key: u64) f64 {
    assert(key != 0);
    const bits = if (key & sign_bit != 0) key & ~sign_bit else ~key;
    return @bitCast(bits);
}

/// Keeps in `word` the largest value folded into it (word 0: none yet).
pub fn foldMax(word: *u64, value: f64) void {
    _ = @atomicRmw(u64, word, .Max, orderedKey(value), .seq_cst);
}

/// Keeps in `word` the complemented key of the smallest value folded into it (0: none yet).
pub fn foldMin(word: *u64, value: f64) void {
    _ = @atomicRmw(u64, word, .Max, ~orderedKey(value), .seq_cst);
}

/// Where one label set of a histogram lives, built once per process by the
/// caller: `buckets` counts (u64 words `stride` bytes apart, not cumulative,
/// the last for +Inf), the sum (an f64 word), and this process's own copy of
/// the finite upper bounds (`buckets - 1` of them, ascending). Nothing in it
/// comes from shared memory.
pub const Buckets = extern struct {
    first: ?[*]u8,
    stride: u64,
    buckets: u64,
    bounds: ?[*]const f64,
    sum: ?*u64,

    fn count(descriptor: *const Buckets, index: u64) *u64 {
        assert(index < descriptor.buckets);
        return @ptrCast(@alignCast(descriptor.first.? + index * descriptor.stride));
    }

    fn finiteBounds(descriptor: *const Buckets) []const f64 {
        return descriptor.bounds.?[0 .. descriptor.buckets - 1];
    }
};

pub fn valid(descriptor: *const Buckets) bool {
    if (descriptor.first == null or descriptor.bounds == null or descriptor.sum == null) return false;
    if (descriptor.buckets < 2 or descriptor.buckets > buckets_max) return false;
    if (descriptor.stride < @sizeOf(u64) or descriptor.stride % @sizeOf(u64) != 0) return false;
    return ascending(descriptor.finiteBounds());
}

/// Whether `bounds` are finite numbers, each larger than the one before.
pub fn ascending(bounds: []const f64) bool {
    assert(bounds.len < buckets_max);
    for (bounds, 0..) |bound, index| {
        if (!std.math.isFinite(bound)) return false;
        if (index > 0 and !(bounds[index - 1] < bound)) return false;
    }
    return true;
}

/// The bucket of `value`: the first whose upper bound is >= value, else the
/// last (+Inf, which also takes NaN).
pub fn bucketOf(bounds: []const f64, value: f64) u64 {
    assert(bounds.len < buckets_max);
    var low: u64 = 0;
    var high: u64 = bounds.len;
    var steps: u32 = 0;
    while (low < high) : (steps += 1) {
        assert(steps < search_steps_max);
        const middle = low + (high - low) / 2;
        if (value <= bounds[middle]) {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    if (std.math.isNan(value)) return bounds.len;
    assert(low <= bounds.len);
    return low;
}

/// One sample: its bucket's count, then the sum.
pub fn observe(descriptor: *const Buckets, value: f64) void {
    assert(valid(descriptor));
    const bucket = bucketOf(descriptor.finiteBounds(), value);
    _ = @atomicRmw(u64, descriptor.count(bucket), .Add, 1, .seq_cst);
    _ = add(descriptor.sum.?, value);
}

const testing = std.testing;

test "add, load and store keep an f64 in a u64 word" {
    var word: u64 = 0;
    try testing.expectEqual(@as(f64, 0.0), load(&word));
    try testing.expectEqual(@as(f64, 1.5), add(&word, 1.5));
    try testing.expectEqual(@as(f64, 1.25), add(&word, -0.25));
    store(&word, -7.0);
    try testing.expectEqual(@as(f64, -7.0), load(&word));
    store(&word, std.math.inf(f64));
    try testing.expectEqual(std.math.inf(f64), add(&word, 1.0));
    var sum: u64 = 0;
    var index: u32 = 0;
    while (index < 1000) : (index += 1) _ = add(&sum, 0.5);
    try testing.expectEqual(@as(f64, 500.0), load(&sum));
}

test "orderedKey orders like the floats and round-trips" {
    const ordered = [_]f64{
        -std.math.inf(f64),         -1e300, -2.5, -1.0,  -std.math.floatMin(f64), -0.0, 0.0,
        std.math.floatTrueMin(f64), 1.0,    2.5,  1e300, std.math.inf(f64),
    };
    for (ordered, 0..) |value, index| {
        const key = orderedKey(value);
        try testing.expect(key != 0 and ~key != 0);
        const back = fromOrderedKey(key);
        try testing.expectEqual(@as(u64, @bitCast(value)), @as(u64, @bitCast(back)));
        if (index > 0) try testing.expect(orderedKey(ordered[index - 1]) < key);
    }
    const negative_nan: f64 = @bitCast(@as(u64, 0xffff_ffff_ffff_ffff));
    const positive_nan: f64 = @bitCast(@as(u64, 0x7fff_ffff_ffff_ffff));
    try testing.expectEqual(orderedKey(std.math.nan(f64)), orderedKey(negative_nan));
    try testing.expectEqual(orderedKey(std.math.nan(f64)), orderedKey(positive_nan));
    try testing.expect(orderedKey(std.math.inf(f64)) < orderedKey(negative_nan));
    try testing.expect(~orderedKey(positive_nan) != 0);
}

test "foldMax and foldMin keep the extremes, 0 meaning none yet" {
    var maximum: u64 = 0;
    var minimum: u64 = 0;
    for ([_]f64{ 3.0, -4.5, 10.25, 0.0, -0.5 }) |value| {
        foldMax(&maximum, value);
        foldMin(&minimum, value);
    }
    try testing.expectEqual(@as(f64, 10.25), fromOrderedKey(maximum));
    try testing.expectEqual(@as(f64, -4.5), fromOrderedKey(~minimum));
    var negative_only: u64 = 0;
    foldMax(&negative_only, -3.0);
    try testing.expectEqual(@as(f64, -3.0), fromOrderedKey(negative_only));
}

test "bucketOf: the first bound at or above the value, +Inf past the last, NaN last" {
    const bounds = [_]f64{ 0.005, 0.01, 0.5, 1.0, 10.0 };
    try testing.expectEqual(@as(u64, 0), bucketOf(&bounds, -1.0));
    try testing.expectEqual(@as(u64, 0), bucketOf(&bounds, 0.005));
    try testing.expectEqual(@as(u64, 1), bucketOf(&bounds, 0.0051));
    try testing.expectEqual(@as(u64, 3), bucketOf(&bounds, 1.0));
    try testing.expectEqual(@as(u64, 4), bucketOf(&bounds, 9.99));
    try testing.expectEqual(@as(u64, 5), bucketOf(&bounds, 10.5));
    try testing.expectEqual(@as(u64, 5), bucketOf(&bounds, std.math.inf(f64)));
    try testing.expectEqual(@as(u64, 0), bucketOf(&bounds, -std.math.inf(f64)));
    try testing.expectEqual(@as(u64, 5), bucketOf(&bounds, std.math.nan(f64)));
    try testing.expectEqual(@as(u64, 0), bucketOf(&[_]f64{}, 3.0));
    var many: [buckets_max - 1]f64 = undefined;
    for (&many, 0..) |*bound, index| bound.* = @floatFromInt(index);
    try testing.expectEqual(@as(u64, 0), bucketOf(&many, -5.0));
    try testing.expectEqual(@as(u64, 700), bucketOf(&many, 699.5));
    try testing.expectEqual(@as(u64, buckets_max - 1), bucketOf(&many, 1e9));
}

test "valid refuses missing pointers, bad sizes and bounds that do not ascend" {
    var counts: [4]u64 = @splat(0);
    var sum: u64 = 0;
    const bounds = [_]f64{ 1.0, 2.0, 3.0 };
    const good = Buckets{ .first = @ptrCast(&counts), .stride = 8, .buckets = 4, .bounds = &bounds, .sum = &sum };
    try testing.expect(valid(&good));
    var bad = good;
    bad.first = null;
    try testing.expect(!valid(&bad));
    bad = good;
    bad.sum = null;
    try testing.expect(!valid(&bad));
    bad = good;
    bad.buckets = 1;
    try testing.expect(!valid(&bad));
    bad = good;
    bad.buckets = buckets_max + 1;
    try testing.expect(!valid(&bad));
    bad = good;
    bad.stride = 12;
    try testing.expect(!valid(&bad));
    const unsorted = [_]f64{ 1.0, 3.0, 2.0 };
    bad = good;
    bad.bounds = &unsorted;
    try testing.expect(!valid(&bad));
    const repeated = [_]f64{ 1.0, 1.0, 2.0 };
    bad.bounds = &repeated;
    try testing.expect(!valid(&bad));
    const infinite = [_]f64{ 1.0, 2.0, std.math.inf(f64) };
    bad.bounds = &infinite;
    try testing.expect(!valid(&bad));
}

test "observe counts one bucket and adds to the sum" {
    var counts: [4]u64 = @splat(0);
    var sum: u64 = 0;
    const bounds = [_]f64{ 0.1, 1.0, 10.0 };
    const descriptor = Buckets{ .first = @ptrCast(&counts), .stride = 8, .buckets = 4, .bounds = &bounds, .sum = &sum };
    for ([_]f64{ 0.05, 0.1, 0.5, 20.0, 5.0, 100.0 }) |value| observe(&descriptor, value);
    try testing.expectEqual([_]u64{ 2, 1, 1, 2 }, counts);
    try testing.expectEqual(@as(f64, 125.65), load(&sum));
}
