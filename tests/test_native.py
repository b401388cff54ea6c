"""postemb_rt._C batch packing against the pure-Python fallback, and the bindings' argument checks."""
import numpy as np
import pytest

from postemb_rt import native

pytestmark = pytest.mark.skipif(not native.NATIVE, reason="postemb_rt._C is not built")

ROWS = [[101, 5, 6, 102], [101, 102], [101, 7, 8, 9, 10, 11, 102]]


@pytest.mark.parametrize("multiple", [1, 8])
def test_native_packing_equals_python_fallback(multiple):
    ids, mask = native.pack_padded(ROWS, 0, multiple)
    ref_ids, ref_mask = native._pack_padded_py(ROWS, 0, multiple)
    assert ids.dtype == mask.dtype == np.int64
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(mask, ref_mask)
    assert ids.shape == (3, 7 if multiple == 1 else 8)
    assert mask.sum(1).tolist() == [4, 2, 7]


def test_pad_id_fills_padding():
    ids, _ = native.pack_padded([[1, 2, 3], [4]], 9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]]


def test_accepts_tuples_and_numpy_rows():
    ids, _ = native.pack_padded([(1, 2), np.array([3], dtype=np.int64)], 0)
    assert ids.tolist() == [[1, 2], [3, 0]]


@pytest.mark.parametrize("pack", [native.pack_padded, native._pack_padded_py], ids=["native", "python"])
def test_empty_batch_is_a_value_error_naming_the_argument(pack):
    """It named `rows`, which pack_padded has no argument called."""
    with pytest.raises(ValueError, match=r"`seqs` must hold at least one row. Given: 0 rows."):
        pack([], 0)


def test_non_sequence_row_names_its_index():
    with pytest.raises(TypeError, match=r"`seqs\[1\]` must be a sequence of int token ids. Given: int"):
        native.pack_padded([[1, 2], 5], 0)


@pytest.mark.parametrize("pack", [native.pack_padded, native._pack_padded_py], ids=["native", "python"])
@pytest.mark.parametrize("multiple", [0, -8])
def test_bad_multiple_is_rejected(pack, multiple):
    with pytest.raises(ValueError, match=f"`pad_to_multiple` must be >= 1. Given: {multiple}"):
        pack([[1]], 0, multiple)


def test_a_huge_multiple_does_not_wrap_to_a_negative_width():
    """Rounding 2 up to a multiple of 2**63 - 1 computed 2 + 2**63 - 2, past int64: the width wrapped
    negative ('negative dimensions are not allowed'). Now it is 2**63 - 1 wide, which numpy refuses
    as too large to allocate."""
    with pytest.raises((ValueError, MemoryError)) as err:
        native.pack_padded([[1, 2]], 0, 2**63 - 1)
    assert "negative" not in str(err.value)


@pytest.mark.parametrize("seqs, error, match", [
    ([[1, 2.5]], TypeError, r"`seqs\[0\]\[1\]` must be an int token id. Given: float \(2.5\). Fix:"),
    (None, TypeError, r"`seqs` must be a list of token-id lists. Given: NoneType. Fix:"),
    ([[1, 2**70]], ValueError, r"`seqs\[0\]\[1\]` is 1180591620717411303424, outside int64. Fix:"),
])
def test_bad_ids_are_named_not_a_pybind11_cast_error(seqs, error, match):
    with pytest.raises(error, match=match):
        native.pack_padded(seqs, 0)


def test_pooling_takes_a_float32_weight_whatever_its_dtype_object():
    """A float32 weight whose dtype object is not numpy's own instance (metadata) is float32 still."""
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((2, 3, 4), dtype=np.float32)
    mask = np.ones((2, 3), np.int64)
    weight = rng.standard_normal((4, 5), dtype=np.float32)
    tagged = weight.view(np.dtype(np.float32, metadata={"source": "checkpoint"}))
    np.testing.assert_array_equal(native._C.masked_mean_pool_l2(hidden, mask, tagged),
                                  native._C.masked_mean_pool_l2(hidden, mask, weight))


def test_pooling_names_a_non_array_argument_not_a_pybind11_signature():
    """noconvert refused them with pybind11's "incompatible function arguments" and the whole signature."""
    torch = pytest.importorskip("torch")
    hidden, mask = np.ones((1, 1, 1), np.float32), np.ones((1, 1), np.int64)
    with pytest.raises(TypeError, match=r"`hidden` must be a numpy array \(B, S, H\).* Given: Tensor. Fix: .*\(\)"):
        native._C.masked_mean_pool_l2(torch.ones(1, 1, 1), mask)
    with pytest.raises(TypeError, match=r"`hidden` must be a numpy array \(B, S, H\).* Given: list. Fix:"):
        native._C.masked_mean_pool_l2(hidden.tolist(), mask)
    with pytest.raises(TypeError, match=r"`mask` must be a numpy array \(B, S\).* Given: list. Fix:"):
        native._C.masked_mean_pool_l2(hidden, mask.tolist())


def test_pooling_names_a_big_endian_mask_as_such():
    """The message said "Given: int64" for a '>i8' mask: the name hid the byte order it refused."""
    with pytest.raises(ValueError, match=r"`mask` must be a native-endian bool or integer array. Given: >i8"):
        native._C.masked_mean_pool_l2(np.ones((1, 2, 3), np.float32), np.ones((1, 2), ">i8"))


def test_pooling_refuses_a_negative_thread_count():
    """num_threads=-3 ran on the automatic count as if 0 had been given."""
    with pytest.raises(ValueError, match=r"`num_threads` must be >= 0 \(0: automatic\). Given: -3"):
        native._C.masked_mean_pool_l2(np.ones((1, 2, 3), np.float32), np.ones((1, 2), np.int64), num_threads=-3)
    with pytest.raises(ValueError, match=r"`max_threads` must be >= 0 \(0: the affinity mask\). Given: -1"):
        native._C.masked_mean_pool_l2(np.ones((1, 2, 3), np.float32), np.ones((1, 2), np.int64), max_threads=-1)


def test_a_stride_off_the_item_size_names_the_fix():
    buf = np.zeros(64, np.uint8)
    hidden = np.lib.stride_tricks.as_strided(buf.view(np.float32), (1, 2, 3), (48, 24, 6))  # 6 bytes: half a float
    with pytest.raises(ValueError, match=r"`hidden` stride 2 \(6 bytes\) must be a multiple of its item size \(4\)\. "
                                         r"Fix: np\.ascontiguousarray\(hidden\)"):
        native._C.masked_mean_pool_l2(hidden, np.ones((1, 2), np.int64))
