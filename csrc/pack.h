// Batch packing: ragged token-id rows -> one zero-padded (rows, width) matrix + mask.
// Plain C++17, no Python: bindings.cpp wraps it, csrc/tests/ can test it alone.
#pragma once
#include <cstdint>
#include <vector>

namespace postemb {

// Width of the packed batch: the longest row, rounded up to a multiple of
// `pad_to_multiple` (1 = no rounding). Throws std::invalid_argument on an empty batch.
int64_t packed_width(const std::vector<std::vector<int64_t>>& rows, int64_t pad_to_multiple);

// Writes rows into `ids` (rows.size() x width, row-major int64) and `mask`
// (same shape, 1 for a real token, 0 for padding); padding slots get `pad_id`.
// Reads/writes rows.size() * width * 16 bytes. Throws if a row is longer than width.
void pack_padded(const std::vector<std::vector<int64_t>>& rows, int64_t pad_id, int64_t width,
                 int64_t* ids, int64_t* mask);

}  // namespace postemb
