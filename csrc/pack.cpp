#include "pack.h"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

namespace postemb {

int64_t packed_width(const std::vector<std::vector<int64_t>>& rows, int64_t pad_to_multiple) {
  // named as pack_padded's Python argument, its only caller's
  if (rows.empty()) throw std::invalid_argument("`seqs` must hold at least one row. Given: 0 rows.");
  if (pad_to_multiple < 1)
    throw std::invalid_argument("`pad_to_multiple` must be >= 1. Given: " + std::to_string(pad_to_multiple) + ".");
  size_t longest = 0;
  for (const auto& r : rows) longest = std::max(longest, r.size());
  const int64_t w = static_cast<int64_t>(longest);
  const int64_t up = w % pad_to_multiple == 0 ? 0 : pad_to_multiple - w % pad_to_multiple;
  if (up > std::numeric_limits<int64_t>::max() - w)  // (w + multiple - 1) would wrap negative
    throw std::invalid_argument("`pad_to_multiple` (" + std::to_string(pad_to_multiple) + ") rounds the longest row (" +
                                std::to_string(w) + ") past int64. Fix: a small multiple such as 8 or 64.");
  return w + up;
}

void pack_padded(const std::vector<std::vector<int64_t>>& rows, int64_t pad_id, int64_t width,
                 int64_t* ids, int64_t* mask) {
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& r = rows[i];
    const int64_t n = static_cast<int64_t>(r.size());
    if (n > width)
      throw std::invalid_argument("`rows[" + std::to_string(i) + "]` has " + std::to_string(n) +
                                  " tokens, more than width " + std::to_string(width) + ".");
    int64_t* id_row = ids + static_cast<int64_t>(i) * width;
    int64_t* mask_row = mask + static_cast<int64_t>(i) * width;
    std::copy(r.begin(), r.end(), id_row);
    std::fill(id_row + n, id_row + width, pad_id);
    std::fill(mask_row, mask_row + n, int64_t{1});
    std::fill(mask_row + n, mask_row + width, int64_t{0});
  }
}

}  // namespace postemb
