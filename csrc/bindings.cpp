// The only file that includes pybind11: each native piece gets one bind_* function here.
// Rule for every binding: validate while holding the GIL, then do the work inside
// py::gil_scoped_release, then build Python results after re-acquiring it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "pack.h"

namespace py = pybind11;

namespace {

std::vector<std::vector<int64_t>> rows_from_python(const py::sequence& seqs) {
  std::vector<std::vector<int64_t>> rows;
  rows.reserve(py::len(seqs));
  size_t i = 0;
  for (const py::handle& item : seqs) {
    if (!py::isinstance<py::sequence>(item) || py::isinstance<py::str>(item))
      throw py::type_error("`seqs[" + std::to_string(i) + "]` must be a sequence of int token ids. Given: " +
                           std::string(py::str(py::type::of(item).attr("__name__"))) + ".");
    rows.push_back(item.cast<std::vector<int64_t>>());
    ++i;
  }
  return rows;
}

void bind_pack(py::module_& m) {
  m.def(
      "pack_padded",
      [](const py::sequence& seqs, int64_t pad_id, int64_t pad_to_multiple) {
        auto rows = rows_from_python(seqs);
        const int64_t width = postemb::packed_width(rows, pad_to_multiple);
        const auto n = static_cast<py::ssize_t>(rows.size());
        py::array_t<int64_t> ids({n, static_cast<py::ssize_t>(width)});
        py::array_t<int64_t> mask({n, static_cast<py::ssize_t>(width)});
        int64_t* ids_ptr = ids.mutable_data();
        int64_t* mask_ptr = mask.mutable_data();
        {
          py::gil_scoped_release release;
          postemb::pack_padded(rows, pad_id, width, ids_ptr, mask_ptr);
        }
        return py::make_tuple(ids, mask);
      },
      py::arg("seqs"), py::arg("pad_id") = 0, py::arg("pad_to_multiple") = 1,
      "Pack ragged token-id rows into zero-padded int64 arrays.\n\n"
      "seqs: sequence of B sequences of int. Returns (input_ids, attention_mask), both int64 (B, L)\n"
      "where L is the longest row rounded up to pad_to_multiple.");
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "postemb_rt native extension: batch packing, CPU kernels, dynamic batcher.";
  bind_pack(m);
}
