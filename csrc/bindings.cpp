// The only file that includes pybind11: each native piece gets one bind_* function here.
// Rule for every binding: validate while holding the GIL, then do the work inside
// py::gil_scoped_release, then build Python results after re-acquiring it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <limits>
#include <string>
#include <unordered_set>
#include <vector>

#include "pack.h"
#include "masked_mean_pool_l2.h"
#include "batcher.h"

namespace py = pybind11;

namespace {

std::string type_name(PyObject* o) { return Py_TYPE(o)->tp_name; }

std::string short_repr(PyObject* o) {
  const std::string r = py::repr(py::handle(o));
  return r.size() > 40 ? r.substr(0, 37) + "..." : r;
}

const char* const kIdsFix = "Fix: pass a list of token-id lists (one list of int per post), e.g. "
                            "Encoder.tokenizer(texts).ids, or embed texts with Encoder.submit(texts).";

std::string where(const char* name, Py_ssize_t i, Py_ssize_t j = -1) {
  return std::string("`") + name + "[" + std::to_string(i) + "]" + (j < 0 ? "" : "[" + std::to_string(j) + "]") +
         "`";
}

constexpr int64_t kAnyVocab = std::numeric_limits<int64_t>::max();  // ids >= 0, vocabulary size unknown

// One token id, name[i][j], as int64: a Python int or an integer-like object (numpy ints), not
// bool or float. vocab > 0: it must lie in [0, vocab) (an id past the embedding table is read
// silently as garbage by some runtimes; kAnyVocab: any id >= 0); vocab == 0: any int64 (packing).
// Messages are built only on failure: this runs once per token.
int64_t token_id(PyObject* x, int64_t vocab, const char* name, Py_ssize_t i, Py_ssize_t j) {
  py::object index;
  if (!PyLong_Check(x) || PyBool_Check(x)) {
    if (PyBool_Check(x) || PyFloat_Check(x) || !PyIndex_Check(x) ||
        !(index = py::reinterpret_steal<py::object>(PyNumber_Index(x)))) {
      PyErr_Clear();
      throw py::type_error(where(name, i, j) + " must be an int token id. Given: " + type_name(x) + " (" +
                           short_repr(x) + "). " + kIdsFix);
    }
    x = index.ptr();
  }
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(x, &overflow);
  if (overflow == 0 && v == -1 && PyErr_Occurred()) throw py::error_already_set();
  if (vocab > 0 && (overflow != 0 || v < 0 || (vocab != kAnyVocab && v >= vocab))) {
    const std::string ids = vocab == kAnyVocab ? " (ids are >= 0 and below 2**63)"
                                               : " of this model (0.." + std::to_string(vocab - 1) + ")";
    throw std::invalid_argument(where(name, i, j) + " is " + short_repr(x) + ", not a token id" + ids +
                                ". Fix: pass ids from the model's own tokenizer (Encoder.tokenizer(texts).ids).");
  }
  if (overflow != 0)
    throw std::invalid_argument(where(name, i, j) + " is " + short_repr(x) + ", outside int64. " + kIdsFix);
  return static_cast<int64_t>(v);
}

// Ragged token-id rows from Python (`name`: a sequence, not a str, of sequences of int), converted
// and checked (token_id) in one pass while holding the GIL.
std::vector<std::vector<int64_t>> rows_from_python(const py::handle& obj, const char* name, int64_t vocab) {
  auto is_text = [](PyObject* o) { return PyUnicode_Check(o) || PyBytes_Check(o) || PyByteArray_Check(o); };
  if (!PySequence_Check(obj.ptr()) || is_text(obj.ptr()))
    throw py::type_error(std::string("`") + name + "` must be a list of token-id lists. Given: " +
                         type_name(obj.ptr()) + ". " + kIdsFix);
  auto seq = py::reinterpret_steal<py::object>(PySequence_Fast(obj.ptr(), "not a sequence"));
  if (!seq) throw py::error_already_set();
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr());
  std::vector<std::vector<int64_t>> rows(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = PySequence_Fast_GET_ITEM(seq.ptr(), i);
    if (!PySequence_Check(item) || is_text(item))
      throw py::type_error(where(name, i) + " must be a sequence of int token ids. Given: " + type_name(item) + ". " +
                           kIdsFix);
    auto row = py::reinterpret_steal<py::object>(PySequence_Fast(item, "not a sequence"));
    if (!row) throw py::error_already_set();
    const Py_ssize_t len = PySequence_Fast_GET_SIZE(row.ptr());
    PyObject** ids = PySequence_Fast_ITEMS(row.ptr());
    auto& out = rows[static_cast<size_t>(i)];
    out.resize(static_cast<size_t>(len));
    for (Py_ssize_t j = 0; j < len; ++j) out[static_cast<size_t>(j)] = token_id(ids[j], vocab, name, i, j);
  }
  return rows;
}

void bind_pack(py::module_& m) {
  m.def(
      "pack_padded",
      [](const py::object& seqs, int64_t pad_id, int64_t pad_to_multiple) {
        auto rows = rows_from_python(seqs, "seqs", 0);
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

// masked_mean_pool_l2: zero-copy numpy views (any strides), validated here with the GIL
// held; the kernel runs with the GIL released.
std::string dtype_name(const py::array& a) { return py::str(a.dtype().attr("name")); }

// float32 of native byte order, whatever the dtype object (numpy's own instance, or an equal one
// carrying metadata, or a '=' copy): numpy's equivalence, not object identity.
bool is_f32(const py::handle& a) { return py::isinstance<py::array_t<float>>(a); }

int64_t elem_stride(const py::array& a, py::ssize_t axis, const char* arg) {
  const auto bytes = static_cast<int64_t>(a.strides(axis));
  const auto item = static_cast<int64_t>(a.itemsize());
  if (bytes % item != 0)
    throw std::invalid_argument(std::string("`") + arg + "` stride " + std::to_string(axis) + " (" +
                                std::to_string(bytes) + " bytes) must be a multiple of its item size (" +
                                std::to_string(item) + "). Fix: np.ascontiguousarray(" + arg + ") (one copy).");
  return bytes / item;
}

const py::array* optional_f32(const py::object& obj, const char* arg, py::ssize_t ndim) {
  if (obj.is_none()) return nullptr;
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string("`") + arg + "` must be a numpy float32 array or None. Given: " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))) + ".");
  const auto& a = reinterpret_cast<const py::array&>(obj);
  if (!is_f32(a))  // str(dtype), not its name: a big-endian float32 reads '>f4', not 'float32'
    throw std::invalid_argument(std::string("`") + arg + "` must be float32. Given: " +
                                std::string(py::str(a.dtype())) + ".");
  if (a.ndim() != ndim)
    throw std::invalid_argument(std::string("`") + arg + "` must have " + std::to_string(ndim) +
                                " dimension(s). Given: " + std::to_string(a.ndim()) + ".");
  return &a;
}

// A numpy array taken as it is: never converted (a copy would hide a wrong dtype and cost a read of it all).
const py::array& numpy_arg(const py::object& obj, const char* arg, const char* what) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string("`") + arg + "` must be a numpy array " + what + ". Given: " +
                         type_name(obj.ptr()) + ". Fix: pass a CPU torch tensor as tensor.numpy() (no copy), "
                         "other sequences through np.asarray().");
  return reinterpret_cast<const py::array&>(obj);
}

void bind_pool(py::module_& m) {
  m.def(
      "masked_mean_pool_l2",
      [](const py::object& hidden_arg, const py::object& mask_arg, const py::object& weight, const py::object& bias,
         bool normalize, const std::string& isa, int num_threads, int max_threads) {
        const py::array& hidden = numpy_arg(hidden_arg, "hidden", "(B, S, H) of float32, float16 or bfloat16");
        const py::array& mask = numpy_arg(mask_arg, "mask", "(B, S) of bool or integers");
        if (num_threads < 0)
          throw std::invalid_argument("`num_threads` must be >= 0 (0: automatic). Given: " +
                                      std::to_string(num_threads) + ".");
        if (max_threads < 0)
          throw std::invalid_argument("`max_threads` must be >= 0 (0: the affinity mask). Given: " +
                                      std::to_string(max_threads) + ".");
        postemb::PoolArgs a;
        if (hidden.ndim() != 3)
          throw std::invalid_argument("`hidden` must be 3-d (B, S, H). Given: " + std::to_string(hidden.ndim()) + "-d.");
        const std::string hname = dtype_name(hidden);
        const char kind = hidden.dtype().kind();
        const char order = hidden.dtype().byteorder();
        if (order == '>') throw std::invalid_argument("`hidden` must be native-endian. Given: " + hname + " big-endian.");
        if (kind == 'f' && hidden.itemsize() == 4) a.hidden_type = postemb::HiddenType::f32;
        else if (kind == 'f' && hidden.itemsize() == 2) a.hidden_type = postemb::HiddenType::f16;
        else if (hname == "bfloat16" && hidden.itemsize() == 2) a.hidden_type = postemb::HiddenType::bf16;
        else throw std::invalid_argument("`hidden` must be float32, float16 or bfloat16 (ml_dtypes). Given: " + hname + ".");
        a.B = hidden.shape(0), a.S = hidden.shape(1), a.H = hidden.shape(2);
        a.hidden = hidden.data();
        a.hidden_stride_b = elem_stride(hidden, 0, "hidden");
        a.hidden_stride_s = elem_stride(hidden, 1, "hidden");
        a.hidden_stride_h = elem_stride(hidden, 2, "hidden");

        const char mkind = mask.dtype().kind();
        if (mask.ndim() != 2 || mask.shape(0) != a.B || mask.shape(1) != a.S)
          throw std::invalid_argument("`mask` must have shape (B, S) = (" + std::to_string(a.B) + ", " +
                                      std::to_string(a.S) + ") to match `hidden`. Given: " +
                                      std::string(py::str(mask.attr("shape"))) + ".");
        if ((mkind != 'b' && mkind != 'i' && mkind != 'u') || mask.dtype().byteorder() == '>')
          throw std::invalid_argument("`mask` must be a native-endian bool or integer array. Given: " +
                                      std::string(py::str(mask.dtype())) + ".");  // '>i8', not its name int64
        a.mask = mask.data();
        a.mask_bytes = static_cast<int>(mask.itemsize());
        a.mask_stride_b = elem_stride(mask, 0, "mask");
        a.mask_stride_s = elem_stride(mask, 1, "mask");

        a.D = a.H;
        if (const py::array* w = optional_f32(weight, "weight", 2)) {
          const std::string given =
              ". Given: (" + std::to_string(w->shape(0)) + ", " + std::to_string(w->shape(1)) + ").";
          if (w->shape(0) != a.H)
            throw std::invalid_argument("`weight` must have shape (H, D) with H = " + std::to_string(a.H) + given);
          if (w->shape(1) < 1) throw std::invalid_argument("`weight` must have shape (H, D) with D >= 1" + given);
          a.weight = static_cast<const float*>(w->data());
          a.D = w->shape(1);
          a.weight_stride_h = elem_stride(*w, 0, "weight");
          a.weight_stride_d = elem_stride(*w, 1, "weight");
        }
        if (const py::array* bv = optional_f32(bias, "bias", 1)) {
          if (bv->shape(0) != a.D)
            throw std::invalid_argument("`bias` must have shape (D,) = (" + std::to_string(a.D) + ",). Given: (" +
                                        std::to_string(bv->shape(0)) + ",).");
          a.bias = static_cast<const float*>(bv->data());
          a.bias_stride = elem_stride(*bv, 0, "bias");
        }
        a.normalize = normalize;
        const postemb::CpuIsa which = postemb::resolve_cpu_isa(isa);
        py::array_t<float> out({static_cast<py::ssize_t>(a.B), static_cast<py::ssize_t>(a.D)});
        a.out = out.mutable_data();
        {
          py::gil_scoped_release release;
          postemb::masked_mean_pool_l2(a, which, num_threads, max_threads);
        }
        return out;
      },
      py::arg("hidden"), py::arg("mask"), py::arg("weight") = py::none(),  // objects: checked, never converted
      py::arg("bias") = py::none(), py::arg("normalize") = true, py::arg("isa") = "auto", py::arg("num_threads") = 0,
      py::arg("max_threads") = 0,
      "normalize(W^T * mean_{s: mask[b,s] != 0} hidden[b,s] + bias) per row, in one pass, GIL released.\n\n"
      "hidden: (B, S, H) float32, float16 or ml_dtypes.bfloat16, any strides (no copy). mask: (B, S) bool or\n"
      "integer (nonzero = token). weight: (H, D) float32 or None. bias: (D,) float32 or None.\n"
      "normalize: unit L2 rows, else the raw projected mean. isa: 'auto' ($POSTEMB_CPU_ISA, else the best\n"
      "this CPU has), 'generic', 'avx2' or 'avx512'. num_threads: > 0: that many threads; 0: automatic,\n"
      "pool_threads(bytes read, max_threads) (max_threads 0: the affinity mask's CPUs).\n"
      "Returns float32 (B, D). A row without tokens pools to zeros (+ bias), never NaN.");
  m.def("pool_threads", &postemb::pool_threads, py::arg("bytes"), py::arg("max_threads") = 0,
        "The threads masked_mean_pool_l2(num_threads=0) starts for `bytes` of hidden states read: one per\n"
        "4 MiB, at least 1, at most max_threads (when > 0) and the CPUs of this process's affinity mask.");
  m.def(
      "cpu_isa", [](const std::string& isa) { return std::string(postemb::cpu_isa_name(postemb::resolve_cpu_isa(isa))); },
      py::arg("isa") = "auto", "The ISA masked_mean_pool_l2 runs with for `isa` ('auto' honours $POSTEMB_CPU_ISA).");
}

// DynamicBatcher for Python: `run(input_ids, attention_mask) -> float32 (B, D)` is called on
// the scheduler thread with the GIL held for that call only; `on_done(list of (ticket,
// status, values | None, message, queue_s, inference_s))` once per batch (and per group of
// expiries), also under the GIL. submit/cancel/close/stats release the GIL before taking the
// batcher mutex, so the lock order is always batcher mutex -> GIL, never the reverse.
struct PyBatcherCallbacks {
  py::object run;
  py::object on_done;
};

class PyDynamicBatcher;

// The batchers not yet freed nor abandoned, closed with drain by an atexit hook (bind_batcher) before Python
// tears down: a scheduler thread that asks for the GIL once finalisation has begun is ended by Python inside
// its `run` call (an abort or a segfault at exit). Touched only with the GIL held, which guards it.
std::unordered_set<PyDynamicBatcher*>& live_batchers() {
  static auto* live = new std::unordered_set<PyDynamicBatcher*>();  // never freed: used up to the last exit hook
  return *live;
}

class PyDynamicBatcher {
 public:
  PyDynamicBatcher(py::object run, py::object on_done, const postemb::BatcherOptions& opt, int64_t vocab_size)
      : vocab_(vocab_size > 0 ? vocab_size : kAnyVocab),
        cb_(std::make_shared<PyBatcherCallbacks>(PyBatcherCallbacks{std::move(run), std::move(on_done)})) {
    if (!PyCallable_Check(cb_->run.ptr()) || !PyCallable_Check(cb_->on_done.ptr()))
      throw py::type_error("`run` and `on_done` must be callable.");
    auto cb = cb_;
    core_ = std::make_unique<postemb::DynamicBatcher>(
        opt,
        [cb](const postemb::BatchView& v, std::vector<float>& out, int64_t& dim) {
          py::gil_scoped_acquire gil;
          try {
            py::array_t<int64_t> ids({v.rows, v.width});
            py::array_t<int64_t> mask({v.rows, v.width});
            const size_t n = static_cast<size_t>(v.rows * v.width);
            std::copy_n(v.input_ids, n, ids.mutable_data());
            std::copy_n(v.attention_mask, n, mask.mutable_data());
            py::object res = cb->run(ids, mask);
            if (!py::isinstance<py::array>(res))
              throw std::runtime_error("`run` must return a numpy float32 array (B, D). Given: " +
                                       std::string(py::str(py::type::of(res).attr("__name__"))) + ".");
            auto arr = py::reinterpret_borrow<py::array>(res);
            if (!is_f32(arr) || arr.ndim() != 2 || arr.shape(0) != v.rows)
              throw std::runtime_error("`run` must return float32 (" + std::to_string(v.rows) +
                                       ", D). Given: " + std::string(py::str(arr.dtype())) + " " +
                                       std::string(py::str(res.attr("shape"))) + ".");
            auto c = py::array_t<float, py::array::c_style>::ensure(arr);  // copies only if strided
            dim = static_cast<int64_t>(c.shape(1));
            out.assign(c.data(), c.data() + static_cast<size_t>(v.rows * dim));
          } catch (py::error_already_set& e) {
            std::string msg = py::str(e.value());
            if (msg.empty()) msg = py::str(py::type::of(e.value()).attr("__name__"));
            throw std::runtime_error(msg);  // the original message; the Python face keeps the object
          }
        },
        [cb](std::vector<postemb::Completion>& done) {
          py::gil_scoped_acquire gil;
          try {
            py::list items;
            for (auto& c : done) {
              py::object values = py::none();
              if (c.status == postemb::RequestStatus::kOk) {
                auto* vec = new std::vector<float>(std::move(c.values));  // owned by the array
                py::capsule owner(vec, [](void* p) { delete static_cast<std::vector<float>*>(p); });
                values = py::array_t<float>({c.rows, c.dim}, vec->data(), owner);
              }
              items.append(py::make_tuple(c.ticket, static_cast<int>(c.status), values, c.message,
                                          c.queue_seconds, c.inference_seconds));
            }
            cb->on_done(items);
          } catch (py::error_already_set& e) {
            e.discard_as_unraisable("postemb_rt._C.DynamicBatcher on_done");
          }
        });
    live_batchers().insert(this);
  }

  ~PyDynamicBatcher() {
    live_batchers().erase(this);
    if (!core_) return;
    const bool own_thread = core_->on_scheduler_thread();
    {
      py::gil_scoped_release release;  // the scheduler may need the GIL to finish its batch
      core_->close(false);             // joins, except on the scheduler thread itself
    }
    if (own_thread) {
      // Dropped from inside a callback: leave the core (and the callbacks it holds) to the
      // exiting thread rather than free them under it.
      core_.release();
      return;
    }
    core_.reset();  // destroys the callbacks' Python references with the GIL held
  }

  postemb::DynamicBatcher& core() {
    if (!core_) throw postemb::BatcherClosedError(kAbandoned);
    return *core_;
  }
  // In a forked child (postemb_rt/forks.py): the scheduler thread stayed in the parent, and a lock of
  // the core may be held there for ever, so the core is never closed nor freed (leaked); every call
  // after this raises BatcherClosedError.
  void abandon() {
    live_batchers().erase(this);
    (void)core_.release();
  }
  static constexpr const char* kAbandoned = "this batcher was inherited through fork() (postemb_rt/forks.py)";
  int64_t vocab() const { return vocab_; }  // submit's token ids lie in [0, vocab)

 private:
  int64_t vocab_;
  std::shared_ptr<PyBatcherCallbacks> cb_;
  std::unique_ptr<postemb::DynamicBatcher> core_;
};

py::dict histogram_dict(const postemb::Histogram& h) {
  py::dict d;
  d["bounds"] = h.bounds;
  d["counts"] = h.counts;
  d["sum"] = h.sum;
  d["count"] = h.count;
  return d;
}

void bind_batcher(py::module_& m) {
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const postemb::OverloadedError& e) {
      py::set_error(py::module_::import("postemb_rt.errors").attr("OverloadedError"), e.what());
    } catch (const postemb::BatcherClosedError& e) {
      py::set_error(py::module_::import("postemb_rt.errors").attr("BatcherClosedError"), e.what());
    }
  });
  // Registered at import, so it runs after postemb_rt.batching's own exit hook (atexit: last in, first out).
  py::module_::import("atexit").attr("register")(py::cpp_function([] {
    std::vector<PyDynamicBatcher*> live(live_batchers().begin(), live_batchers().end());
    for (PyDynamicBatcher* b : live) {
      if (live_batchers().count(b) == 0) continue;  // freed by a callback of one closed before it
      // Its Python object (pybind11 finds the registered one): it stays alive while close() waits.
      py::object self = py::cast(b, py::return_value_policy::reference);
      self.attr("close")(true);
    }
  }));
  py::class_<PyDynamicBatcher>(m, "DynamicBatcher",
                               "C++ dynamic batcher (csrc/batcher.h). Use postemb_rt.batching.DynamicBatcher.")
      .def(py::init([](py::object run, py::object on_done, int64_t max_batch_tokens, int64_t max_batch_size,
                       int64_t max_wait_us, int64_t max_queued_tokens, int64_t batch_overhead_tokens, int64_t window,
                       int64_t pad_id, int64_t vocab_size) {
             postemb::BatcherOptions o;
             o.max_batch_tokens = max_batch_tokens;
             o.max_batch_size = max_batch_size;
             o.max_wait_us = max_wait_us;
             o.max_queued_tokens = max_queued_tokens;
             o.batch_overhead_tokens = batch_overhead_tokens;
             o.window = window;
             o.pad_id = pad_id;
             return std::make_unique<PyDynamicBatcher>(std::move(run), std::move(on_done), o, vocab_size);
           }),
           py::arg("run"), py::arg("on_done"), py::arg("max_batch_tokens") = 4096, py::arg("max_batch_size") = 64,
           py::arg("max_wait_us") = 500, py::arg("max_queued_tokens") = 65536, py::arg("batch_overhead_tokens") = 64,
           py::arg("window") = 1024, py::arg("pad_id") = 0, py::arg("vocab_size") = 0,
           "Options as csrc/batcher.h BatcherOptions; vocab_size > 0: submit refuses token ids outside\n"
           "[0, vocab_size) (0: any id >= 0). Validated with clear messages by postemb_rt.batching.")
      .def(
          "submit",
          [](PyDynamicBatcher& self, uint64_t ticket, const py::object& posts, double timeout_s) {
            auto rows = rows_from_python(posts, "posts", self.vocab());
            // 1e9 s (31 years) or more, inf or NaN: no deadline (and timeout_s * 1e6 stays inside int64).
            const int64_t timeout_us =
                timeout_s > 0 && timeout_s < 1e9 ? std::max<int64_t>(1, static_cast<int64_t>(timeout_s * 1e6)) : 0;
            py::gil_scoped_release release;
            self.core().submit(ticket, std::move(rows), timeout_us);
          },
          py::arg("ticket"), py::arg("posts"), py::arg("timeout_s") = 0.0,
          "Queue posts (a sequence of int token-id sequences) under `ticket`. Raises OverloadedError,\n"
          "BatcherClosedError, ValueError, TypeError. timeout_s > 0: fail instead of computing after that long.")
      .def(
          "cancel",
          [](PyDynamicBatcher& self, uint64_t ticket) {
            py::gil_scoped_release release;
            return self.core().cancel(ticket);
          },
          py::arg("ticket"))
      .def(
          "close",
          [](PyDynamicBatcher& self, bool drain) {
            py::gil_scoped_release release;
            self.core().close(drain);
          },
          py::arg("drain") = true, "Stop; drain=True computes what is queued first. Joins the thread.")
      .def("abandon", &PyDynamicBatcher::abandon,
           "In a forked child: forget the core without closing it (its thread stayed in the parent); leaked.")
      .def_property_readonly("closed", [](PyDynamicBatcher& self) {
        py::gil_scoped_release release;
        return self.core().closed();
      })
      .def("stats", [](PyDynamicBatcher& self) {
        postemb::BatcherStats s;
        {
          py::gil_scoped_release release;
          s = self.core().stats();
        }
        py::dict d;
        d["pending_requests"] = s.pending_requests;
        d["queued_posts"] = s.queued_posts;
        d["queued_tokens"] = s.queued_tokens;
        d["in_flight_posts"] = s.in_flight_posts;
        d["requests_submitted"] = s.requests_submitted;
        d["requests_ok"] = s.requests_ok;
        d["requests_failed"] = s.requests_failed;
        d["requests_expired"] = s.requests_expired;
        d["requests_rejected"] = s.requests_rejected;
        d["requests_cancelled"] = s.requests_cancelled;
        d["requests_closed"] = s.requests_closed;
        d["batches"] = s.batches;
        d["batches_failed"] = s.batches_failed;
        d["posts_computed"] = s.posts_computed;
        d["tokens_computed"] = s.tokens_computed;
        d["padded_tokens_computed"] = s.padded_tokens_computed;
        d["batch_size"] = histogram_dict(s.batch_size);
        d["batch_padding_ratio"] = histogram_dict(s.batch_padding_ratio);
        d["queue_seconds"] = histogram_dict(s.queue_seconds);
        d["inference_seconds"] = histogram_dict(s.inference_seconds);
        return d;
      });
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "postemb_rt native extension: batch packing, CPU kernels, dynamic batcher.";
  bind_pack(m);
  bind_pool(m);
  bind_batcher(m);
}
