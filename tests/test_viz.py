"""repmlp_lite.viz: picture sizes, hand-counted sparsity, and the explorer's picture and its invalid settings."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from repmlp_lite import conv_to_fc, viz  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def image_of(ax):
    """The array drawn by the axes' first image, masked entries (zeros) filled with 0."""
    return np.ma.filled(ax.images[0].get_array(), 0.0)


# --- counts, checked against hand counts -------------------------------------------------------


def test_one_channel_3x3_on_4x4_counts():
    # Per image axis, output positions 0..3 see 2, 3, 3, 2 kernel taps (border ones fall in the padding):
    # 10 per axis, 10 * 10 = 100 nonzeros in the 16 x 16 matrix.
    stats = viz.sparsity_stats(1, 1, 3, 4, 4)
    assert (stats.rows, stats.cols) == (16, 16)
    assert stats.nonzeros == 100
    assert stats.distinct_weights == 9 == stats.conv_params
    assert stats.dense_fc_params == 256 == stats.grouped_fc_params
    assert stats.density == pytest.approx(100 / 256)


def test_nonzeros_per_row_corner_edge_interior():
    torch.manual_seed(0)
    dense = viz.dense_fc_kernel(torch.randn(1, 1, 3, 3), 4, 4)
    per_row = (dense != 0).sum(1).reshape(4, 4)
    assert per_row[0, 0] == 4  # corner: 2 x 2 taps inside the image
    assert per_row[0, 1] == 6  # edge: 2 x 3
    assert per_row[1, 1] == 9  # interior: the whole kernel
    taps = torch.tensor([2, 3, 3, 2])
    assert torch.equal(per_row, torch.outer(taps, taps))


def test_small_partition_uses_only_part_of_a_large_kernel():
    # K = 7, "same" padding 3, on 3 x 3: row offsets y - i lie in -2..2, so kernel rows (and columns) 1..5.
    stats = viz.sparsity_stats(1, 1, 7, 3, 3)
    assert stats.conv_params == 49
    assert stats.distinct_weights == 25


def test_grouped_counts():
    stats = viz.sparsity_stats(4, 4, 3, 4, 4, groups=2)
    assert (stats.rows, stats.cols) == (64, 64)
    assert stats.conv_params == 4 * 2 * 9
    assert stats.nonzeros == 4 * 2 * 100  # each (o, c) pair of a group is one 16 x 16 block with 100 nonzeros
    assert stats.grouped_fc_params == 64 * 64 // 2


def test_pointwise_conv_with_padding():
    # K = 1, padding 1 on 2 x 2: a 4 x 4 output whose border is zero; each input pixel reaches one output.
    stats = viz.sparsity_stats(1, 1, 1, 2, 2, padding=1)
    assert (stats.rows, stats.cols) == (16, 4)
    assert stats.nonzeros == 4


def test_kernel_taps_name_kernel_entries():
    taps = viz.kernel_taps(3, 4, 4)
    # Output pixel (1, 1) = row 5 reads input (y, x) through F[y - 1 + 1, x - 1 + 1] = F[y, x] for y, x < 3.
    assert taps[5, 0] == 1  # input (0, 0): F[0, 0]
    assert taps[5, 10] == 9  # input (2, 2): F[2, 2]
    assert taps[5, 15] == 0  # input (3, 3): out of reach
    assert sorted(taps.unique().tolist()) == list(range(10))


@pytest.mark.parametrize(
    "args, message",
    [
        ((3, 4, 3, 4, 4, None, 2), "divisible by groups=2"),  # groups does not divide C
        ((4, 3, 3, 4, 4, None, 2), "divisible by groups=2"),  # groups does not divide O
        ((1, 1, 4, 4, 4, None, 1), "even"),  # even K with "same" padding
        ((1, 1, 7, 4, 4, 0, 1), "leaves no output"),  # 7 x 7 kernel on 4 x 4 without padding
    ],
)
def test_invalid_combinations_raise(args, message):
    with pytest.raises(ValueError, match=message):
        viz.sparsity_stats(*args)


# --- pictures --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "out_c, in_c, k, h, w, padding, groups, shape",
    [
        (1, 1, 3, 4, 4, None, 1, (16, 16)),
        (3, 2, 3, 4, 5, None, 1, (60, 40)),
        (3, 2, 3, 4, 5, 0, 1, (3 * 2 * 3, 2 * 20)),  # h' = 2, w' = 3
        (4, 4, 5, 3, 3, None, 4, (36, 36)),
    ],
)
def test_plot_fc_kernel_image_is_the_dense_matrix(out_c, in_c, k, h, w, padding, groups, shape):
    torch.manual_seed(0)
    kernel = torch.randn(out_c, in_c // groups, k, k)
    ax = viz.plot_fc_kernel(kernel, h, w, padding, groups)
    assert ax.images[0].get_array().shape == shape
    expected = viz.dense_fc_kernel(kernel, h, w, padding, groups).numpy()
    np.testing.assert_allclose(image_of(ax), expected, rtol=1e-6)
    # zeros are masked (drawn white), exactly as many as the structural zeros
    stats = viz.sparsity_stats(in_c, out_c, k, h, w, padding, groups)
    assert np.ma.getmaskarray(ax.images[0].get_array()).sum() == stats.dense_fc_params - stats.nonzeros


def test_plot_fc_kernel_group_and_channel_lines():
    kernel = torch.randn(4, 1, 3, 3)
    ax = viz.plot_fc_kernel(kernel, 3, 3, groups=4)
    black = [line for line in ax.lines if line.get_color() == "black"]
    assert len(black) == 2 * 3  # 3 horizontal + 3 vertical group boundaries


def test_plot_fc_kernel_accepts_grouped_fc_matrix():
    kernel = torch.randn(4, 2, 3, 3)
    grouped = conv_to_fc(kernel, 4, 4, groups=2)  # (64, 32)
    ax = viz.plot_fc_kernel(grouped, 4, 4, groups=2)
    assert ax.images[0].get_array().shape == (64, 64)
    with pytest.raises(ValueError, match="out_hw"):
        viz.plot_fc_kernel(grouped, 4, 4, padding=1, groups=2)


def test_show_values_writes_one_label_per_nonzero():
    ax = viz.plot_fc_kernel(torch.arange(1.0, 10.0).reshape(1, 1, 3, 3), 4, 4, show_values=True)
    assert len(ax.texts) == 100
    with pytest.raises(ValueError, match="show_values"):
        viz.plot_fc_kernel(torch.randn(8, 8, 3, 3), 8, 8, show_values=True)


def test_band_map_labels_kernel_rows():
    ax = viz.plot_band_map(3, 4, 4)
    grid = ax.images[0].get_array()
    assert grid.shape == (4, 4)
    assert np.ma.getmaskarray(grid).sum() == 6  # blocks with |y - i| > 1 are zero
    assert grid[0, 0] == 1 and grid[1, 0] == 0 and grid[0, 1] == 2  # kernel row y - i + 1
    # no padding, 5 x 5 input: h' = 3 and block (i, y) holds kernel row y - i
    grid = viz.plot_band_map(3, 5, 5, padding=0).images[0].get_array()
    assert grid.shape == (3, 5)
    assert [grid[0, y] for y in range(3)] == [0, 1, 2]


def test_one_hot_response_is_a_column_of_w():
    kernel = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    fig = viz.plot_one_hot_response(kernel, 4, 5, pixel=(1, 2))
    one_hot, response, fc = (image_of(ax) for ax in fig.axes[:3])
    assert one_hot.shape == (4, 5) and one_hot.sum() == 1 and one_hot[1, 2] == 1
    assert fc.shape == (20, 20)
    np.testing.assert_array_equal(fc[:, 1 * 5 + 2].reshape(4, 5), response)
    assert response[0, 1] == 9  # the kernel is rotated by 180 degrees around the pixel
    with pytest.raises(ValueError, match="outside"):
        viz.plot_one_hot_response(kernel, 4, 5, pixel=(4, 0))


def test_kernel_gallery_grid():
    fig = viz.kernel_gallery(kernel_sizes=(1, 3), groups=(1, 2), channels=2, h=3, w=4)
    assert len(fig.axes) == 4
    assert all(ax.images[0].get_array().shape == (24, 24) for ax in fig.axes)
    with pytest.raises(ValueError, match="divisible"):
        viz.kernel_gallery(kernel_sizes=(3,), groups=(3,), channels=4)


def test_kernel_gallery_defaults_draw_entries_nearest_and_at_least_three_pixels_wide():
    """The book's gallery: every matrix entry a few screen pixels wide at the column's 100 dpi."""
    fig = viz.kernel_gallery()
    fig.canvas.draw()
    for ax in fig.axes:
        image = ax.images[0]
        assert image.get_interpolation() == "nearest"
        entries = image.get_array().shape[1]
        assert ax.get_window_extent().width * 100 / fig.dpi / entries >= 2.8
    plt.close(fig)


def test_fc_kernel_terms_share_one_colour_scale_and_one_colour_bar():
    small = torch.full((4, 4), 0.1) * torch.eye(4)
    large = torch.randn(4, 4) * 10
    fig = viz.plot_fc_kernel_terms([("small", small), ("large", large)], 2, 2)
    panels = [ax for ax in fig.axes if ax.images]
    limits = {ax.images[0].get_clim() for ax in panels}
    top = float(large.abs().max())
    assert limits == {(-top, top)}, "every term on the same symmetric scale"
    assert len(fig.axes) == len(panels) + 1, "one colour bar for all terms"
    assert [ax.get_title() for ax in panels] == ["small", "large"]
    with pytest.raises(ValueError, match="terms"):
        viz.plot_fc_kernel_terms([], 2, 2)
    plt.close(fig)


# --- the explorer's picture (the explorer itself: tests/test_explorers.py) --------------------


def test_explorer_figure_and_errors():
    fig, stats = viz.explorer_figure(3, None, 2, 4, 4, 4, 6)
    assert fig.axes[0].images[0].get_array().shape == (96, 64)
    assert stats.conv_params == 6 * 2 * 9
    with pytest.raises(ValueError, match="divisible"):
        viz.explorer_figure(3, None, 4, 4, 4, 2, 4)
