"""The applicability score, its conformal p-values and the batch test, on known distributions."""

import numpy as np
import pytest

from segqual_jax.config import schema, validation
from segqual_jax.quality import applicability

D = 40


def _fitted(kind, rng, n_fit=300, n_ref=200):
  return applicability.fit(kind, rng.normal(size=(n_fit, D)), rng.normal(size=(n_ref, D)), k=10)


def test_the_schema_names_the_implemented_scores():
  rng = np.random.default_rng(0)
  for kind in schema.APPLICABILITY_SCORES:
    assert applicability.fit(kind, rng.normal(size=(10, 3)), rng.normal(size=(3, 3)), k=2).kind == kind
  with pytest.raises(ValueError, match='unknown applicability score'):
    applicability.fit('entropy', rng.normal(size=(10, 3)), rng.normal(size=(3, 3)))


@pytest.mark.parametrize('kind', schema.APPLICABILITY_SCORES)
def test_pvalues_are_uniform_in_distribution_and_small_out_of_it(kind):
  """Under exchangeability P(p <= a) <= a (up to sampling noise); a shifted case scores higher."""
  rng = np.random.default_rng(1)
  # Averaged over independent reference draws, so the check is on the p-value's
  # marginal law (which conformal prediction guarantees), not on one reference set.
  rates = []
  for _ in range(20):
    score = _fitted(kind, rng)
    p = score.pvalues(score.score(rng.normal(size=(500, D))))
    rates.append([np.mean(p <= a) for a in (0.01, 0.05, 0.2, 0.5)])
    assert p.min() >= 1 / 201 and p.max() <= 1
  for a, rate in zip((0.01, 0.05, 0.2, 0.5), np.mean(rates, 0)):
    assert rate <= a + 0.01, (a, rate)  # valid ...
    assert rate >= a - 0.02, (a, rate)  # ... and not wastefully conservative
  score = _fitted(kind, rng)
  shifted = score.pvalues(score.score(rng.normal(size=(500, D)) + 1.0))
  assert np.mean(shifted < 0.01) > 0.8
  inside = score.score(rng.normal(size=(500, D)))
  outside = score.score(rng.normal(size=(500, D)) + 1.0)
  assert np.mean(outside[:, None] > inside[None, :]) > 0.97  # in-vs-out AUROC


def test_per_level_scores_catch_a_shift_confined_to_one_level():
  """A shift in 4 of 40 features (one 'level') is diluted in one joint distance, not per level."""
  rng = np.random.default_rng(6)
  levels = (4, 12, 24)
  make = lambda n: np.exp(rng.normal(size=(n, D)))  # positive, skewed: like pooled ReLU statistics
  fit_x, ref_x, in_x, out_x = make(300), make(200), make(300), make(300)
  out_x[:, :4] *= np.exp(2.0)  # level 0 only: +2 deviations of its log features
  auroc = {}
  for name, lv in (('per level', levels), ('joint', None)):
    score = applicability.fit('mahalanobis', fit_x, ref_x, levels=lv)
    inside, outside = score.score(in_x), score.score(out_x)
    auroc[name] = np.mean(outside[:, None] > inside[None, :])
  assert score.levels == (D,) and len(applicability.fit('mahalanobis', fit_x, ref_x, levels=levels).gaussians) == 3
  assert auroc['per level'] > 0.95 and auroc['per level'] > auroc['joint'] + 0.03, auroc
  with pytest.raises(ValueError, match='do not add up'):
    applicability.fit('mahalanobis', make(30), make(10), levels=(4, 4))


def test_a_non_finite_case_is_the_least_applicable():
  rng = np.random.default_rng(2)
  score = _fitted('mahalanobis', rng)
  x = rng.normal(size=(3, D))
  x[1, 5] = np.nan
  x[2, 0] = np.inf
  s = score.score(x)
  assert np.isfinite(s[0]) and np.isinf(s[1:]).all()
  assert np.allclose(score.pvalues(s[1:]), 1 / 201)


def test_save_and_load_give_the_same_scores(tmp_path):
  rng = np.random.default_rng(3)
  for kind in schema.APPLICABILITY_SCORES:
    score = _fitted(kind, rng)
    path = str(tmp_path / f'{kind}.npz')
    score.save(path)
    x = rng.normal(size=(20, D))
    np.testing.assert_array_equal(applicability.Applicability.load(path).score(x), score.score(x))


def test_batch_test_accepts_exchangeable_batches_at_its_rate_and_rejects_shifted_ones():
  rng = np.random.default_rng(4)
  score = _fitted('mahalanobis', rng)
  level, draws = 0.05, 300
  null = [applicability.batch_test(score.score(rng.normal(size=(60, D))), score.reference_scores)['pvalue']
          for _ in range(draws)]
  # The reference set is fixed across draws, so the rate is that of one reference draw:
  # allow the binomial noise of 300 draws and the reference set's own luck.
  assert np.mean(np.array(null) < level) <= level + 0.05
  shifted = [applicability.batch_test(score.score(rng.normal(size=(60, D)) * 1.15), score.reference_scores)['pvalue']
             for _ in range(50)]
  assert np.mean(np.array(shifted) < level) >= 0.95
  # a batch *more* typical than the references (smaller scores) is not a shift to flag
  tight = applicability.batch_test(score.score(rng.normal(size=(60, D)) * 0.5), score.reference_scores)
  assert tight['pvalue'] > 0.5


def test_split_holds_out_a_seeded_reference_share():
  fit_a, ref_a = applicability.split_indices(100, 0.3, seed=0)
  fit_b, ref_b = applicability.split_indices(100, 0.3, seed=0)
  assert len(ref_a) == 30 and not set(fit_a) & set(ref_a) and len(fit_a) + len(ref_a) == 100
  np.testing.assert_array_equal(ref_a, ref_b)
  assert len(applicability.split_indices(3, 0.9, seed=0)[0]) == 2  # >= 2 cases left to fit


def test_the_gate_says_when_it_cannot_flag_anything():
  assert applicability.powerless_warning(99, 0.01) is not None  # smallest p = 1/100, not < 0.01
  assert applicability.powerless_warning(100, 0.01) is None
  assert applicability.powerless_warning(5, 0.0) is None  # gate off: nothing to warn about


def test_a_score_uses_only_its_views_blocks():
  """With blocks chosen, the columns of the other blocks never change a score."""
  rng = np.random.default_rng(0)
  levels = (4, 3, 5)
  fit_x, ref_x = rng.random((60, 12)) + 0.5, rng.random((20, 12)) + 0.5
  score = applicability.fit('mahalanobis', fit_x, ref_x, levels=levels, blocks=(0, 2))
  new = rng.random((5, 12)) + 0.5
  changed = new.copy()
  changed[:, 4:7] = 50.0  # block 1: not a view of this score
  np.testing.assert_array_equal(score.score(new), score.score(changed))
  changed[:, 0] = 50.0  # block 0 is
  assert np.all(score.score(changed) > score.score(new))
  changed = new.copy()
  changed[:, 4:7] = 50.0
  all_blocks = applicability.fit('mahalanobis', fit_x, ref_x, levels=levels)  # every block a view
  assert np.all(all_blocks.score(changed) > all_blocks.score(new))


def test_image_statistics_see_colour_and_texture():
  import jax.numpy as jnp
  from scipy import ndimage
  from segqual_jax.data import image_statistics as stats
  rng = np.random.default_rng(0)
  noise = rng.random((64, 64, 3)).astype(np.float32)
  blurred = ndimage.gaussian_filter(noise, (2, 2, 0))
  s_noise, s_blur = (np.asarray(stats.statistics(jnp.asarray(x))) for x in (noise, blurred))
  colour = slice(0, stats.BLOCKS[0])
  bands = slice(stats.BLOCKS[0], stats.BLOCKS[0] + stats.FREQUENCY_BANDS)
  assert s_noise.shape == (sum(stats.BLOCKS),) and np.all(s_noise >= 0)
  np.testing.assert_allclose(s_noise[colour].reshape(3, -1).sum(1), 1.0, rtol=1e-5)  # shares per channel
  np.testing.assert_allclose(s_noise[bands].sum(), 1.0, rtol=1e-5)
  low = lambda s: s[bands][:2].sum()
  assert low(s_blur) > 0.9 and low(s_noise) < 0.3  # blur moves the power to low frequencies
  flat = np.asarray(stats.statistics(jnp.full((64, 64, 3), 0.55)))
  assert flat[colour].reshape(3, -1)[:, 4].tolist() == [1.0, 1.0, 1.0]  # all in the bin of 0.55


def test_layout_is_each_cells_colour_and_busyness_at_any_size():
  """The layout block: per cell of a 4 x 4 grid, mean R, G, B and the grey deviation, for a
  side that the grid does not divide (cells of 7 and 8 pixels)."""
  import jax.numpy as jnp
  from segqual_jax.data import image_statistics as stats
  rng = np.random.default_rng(1)
  image = rng.random((30, 29, 3)).astype(np.float32)
  block = slice(sum(stats.BLOCKS[:2]), sum(stats.BLOCKS[:3]))
  layout = np.asarray(stats.statistics(jnp.asarray(image)))[block].reshape(4, 4, 4)
  rows = np.array_split(np.arange(30), [8, 15, 23])  # floor(i * 4 / n) puts pixel i in its cell
  cols = np.array_split(np.arange(29), [8, 15, 22])
  assert [len(r) for r in rows] == [8, 7, 8, 7] and [len(c) for c in cols] == [8, 7, 7, 7]
  for i, r in enumerate(rows):
    for j, c in enumerate(cols):
      cell = image[np.ix_(r, c)]
      np.testing.assert_allclose(layout[i, j, :3], cell.mean((0, 1)), atol=1e-5)
      np.testing.assert_allclose(layout[i, j, 3], cell.mean(-1).std(), atol=1e-5)
  framed = np.full((64, 64, 3), 0.6, np.float32)
  framed[:, :16] = 0.0  # a black band on the left: the histograms would only see a dark share
  lay = np.asarray(stats.statistics(jnp.asarray(framed)))[block].reshape(4, 4, 4)
  assert np.all(lay[:, 0, :3] == 0) and np.allclose(lay[:, 1:, :3], 0.6)


def test_tone_is_the_joint_share_of_saturation_and_value():
  """The tone block: the share of pixels in each (saturation, value) bin of 8 x 8, by hand
  for three known colours; hue does not move it."""
  import jax.numpy as jnp
  from segqual_jax.data import image_statistics as stats
  assert stats.NAMES[3] == 'tone' and stats.BLOCKS[3] == stats.TONE_BINS ** 2 == 64
  image = np.zeros((8, 10, 3), np.float32)
  image[:4] = (0.9, 0.45, 0.09)  # saturation 0.9 (bin 7), value 0.9 (bin 7): vivid orange
  image[4:6] = (0.5, 0.5, 0.5)  # grey: saturation 0, value 0.5 (bin 4)
  image[6:] = 0.0  # black: saturation 0 (max 0 guarded), value 0
  tone = np.asarray(stats.statistics(jnp.asarray(image)))[sum(stats.BLOCKS[:3]):].reshape(8, 8)
  expected = np.zeros((8, 8))
  expected[7, 7], expected[0, 4], expected[0, 0] = 0.5, 0.25, 0.25
  np.testing.assert_allclose(tone, expected, atol=1e-6)
  hue_turned = image[..., ::-1]  # the same vividness in blue
  np.testing.assert_allclose(np.asarray(stats.statistics(jnp.asarray(hue_turned)))[sum(stats.BLOCKS[:3]):],
                             tone.reshape(-1), atol=1e-6)


def test_a_block_fitted_on_its_own_cases_keeps_p_values_exact():
  """``block_fit``: an image-statistics block fitted on other (more) cases than the encoder
  blocks. The Gaussian is theirs, and the p-values of new in-distribution cases stay
  conformal: the share below a level is at most it (mean over seeded draws)."""
  levels = (6, 4)
  shares, centers_ok = [], []
  for seed in range(40):
    rng = np.random.default_rng(seed)
    draw = lambda n: np.exp(rng.normal(size=(n, 10)))  # positive, like the statistics
    own = draw(400)[:, 6:]
    score = applicability.fit('mahalanobis', draw(80), draw(60), levels=levels, seed=seed,
                              block_fit={1: own})
    centers_ok.append(np.allclose(score.gaussians[1].center, np.log(own + 1e-3).mean(0)))
    shares.append(np.mean(score.pvalues(score.score(draw(300))) <= 0.1))
  assert all(centers_ok)
  assert np.mean(shares) <= 0.1 + 0.01, np.mean(shares)
  with pytest.raises(ValueError, match='block 1'):
    applicability.fit('mahalanobis', draw(80), draw(60), levels=levels, block_fit={1: own[:, :3]})


def test_views_are_named_blocks():
  from segqual_jax.segmenter import runner
  from segqual_jax.data import image_statistics as stats
  config = schema.get_config()
  encoder = len(runner.feature_levels(config.seg)) - len(stats.BLOCKS)
  pooled = config.seg.depth + 1  # then the grid levels
  assert encoder == pooled + 2
  assert runner.feature_blocks(config.seg, 'layout,encoder') == ((encoder + 2,),) + tuple(
      (level,) for level in range(pooled))
  assert runner.feature_blocks(config.seg, 'encoder_grid, tone+texture') == (
      (pooled,), (pooled + 1,), (encoder + 3, encoder + 1))
  blocks = runner.image_statistic_blocks(config.seg)
  assert sorted(blocks) == [encoder + i for i in range(len(stats.NAMES))]
  assert [blocks[b].stop - blocks[b].start for b in sorted(blocks)] == list(stats.BLOCKS)
  for bad, message in (('encoder,hue', 'hue'), ('encoder+tone', 'encoder'), ('encoder_grid+tone', 'encoder'),
                       ('tone+tone', 'twice'),
                       ('tone,tone+texture', 'twice')):
    with pytest.raises(ValueError, match=message):
      runner.feature_blocks(config.seg, bad)
    assert not validation._views_ok(bad)
  assert validation._views_ok('encoder,tone+texture,layout')


def test_joined_blocks_are_one_gaussian():
  """A group of blocks is one Gaussian over their features together: it sees a case unusual
  in how two blocks vary together, which two separate Gaussians miss; fitted on the group's
  own cases, and a group whose blocks are fitted on different cases is refused."""
  rng = np.random.default_rng(0)
  def draw(n):  # blocks 0 and 1 (3 features each) move together; block 2 is noise
    shared = rng.normal(size=(n, 1))
    return np.exp(np.concatenate([shared + 0.1 * rng.normal(size=(n, 3)),
                                  shared + 0.1 * rng.normal(size=(n, 3)),
                                  rng.normal(size=(n, 2))], 1))
  levels = (3, 3, 2)
  odd = draw(200)
  odd[:, 3:6] = odd[:, 3:6] / np.exp(2 * np.log(odd[:, :3]).mean(1, keepdims=True))  # break the tie
  apart = applicability.fit('mahalanobis', draw(400), draw(200), levels=levels, blocks=((0,), (1,)))
  joined = applicability.fit('mahalanobis', draw(400), draw(200), levels=levels, blocks=((0, 1),))
  assert joined.levels == (6,) and apart.levels == (3, 3)
  flagged = lambda s: np.mean(s.pvalues(s.score(odd)) <= 0.05)
  assert flagged(joined) > 0.9 and flagged(apart) < 0.5, (flagged(joined), flagged(apart))
  assert np.mean(joined.pvalues(joined.score(draw(400))) <= 0.05) <= 0.1
  own = draw(300)
  fitted = applicability.fit('mahalanobis', draw(50), draw(200), levels=levels, blocks=((0, 1), (2,)),
                             block_fit={0: own[:, :3], 1: own[:, 3:6]})
  assert np.allclose(fitted.gaussians[0].center, np.log(own[:, :6] + 1e-3).mean(0))
  with pytest.raises(ValueError, match='only some'):
    applicability.fit('mahalanobis', draw(50), draw(20), levels=levels, blocks=((0, 1),),
                      block_fit={0: own[:, :3]})


def test_a_score_refuses_features_of_another_layout(tmp_path):
  """A gate fitted before f's features or the image statistics changed must never score the
  new layout (its columns would pick other features and flag everything, or nothing)."""
  from segqual_jax.core import errors
  rng = np.random.default_rng(0)
  score = applicability.fit('mahalanobis', rng.random((40, 6)) + 0.1, rng.random((20, 6)) + 0.1,
                            levels=(3, 3), blocks=((1,),))
  path = str(tmp_path / 'score.npz')
  score.save(path)
  loaded = applicability.Applicability.load(path)
  assert loaded.width == 6
  new = rng.random((5, 6)) + 0.1
  np.testing.assert_array_equal(loaded.score(new), score.score(new))
  with pytest.raises(errors.ConfigError, match='6 feature columns, these have 7'):
    loaded.score(rng.random((5, 7)))


def test_the_batch_test_scores_views_of_its_own(tmp_path):
  """``batch_blocks``: one fit, two scores -- the gate's max over its groups, the batch test's
  over its own (a group in both fitted once), each with its reference scores; saved and loaded."""
  rng = np.random.default_rng(3)
  draw = lambda n: np.exp(rng.normal(size=(n, 6)))
  levels = (2, 2, 2)
  both = applicability.fit('mahalanobis', draw(200), draw(60), levels=levels, seed=1,
                           blocks=((0,), (1,)), batch_blocks=((1,), (2,)))
  gate = applicability.fit('mahalanobis', draw(200), draw(60), levels=levels, seed=1, blocks=((0,), (1,)))
  assert len(both.gaussians) == 3 and both.gate_groups.tolist() == [0, 1] and both.batch_groups.tolist() == [1, 2]
  new = draw(30)
  far_in_2 = new.copy()
  far_in_2[:, 4:] *= 50.0  # unusual only in block 2: the batch score sees it, the gate does not
  np.testing.assert_array_equal(both.score(far_in_2), both.score(new))
  assert np.all(both.batch_score(far_in_2) > both.batch_score(new))
  assert len(both.batch_references) == 60 and not np.array_equal(both.batch_references, both.reference_scores)
  path = str(tmp_path / 'score.npz')
  both.save(path)
  back = applicability.Applicability.load(path)
  np.testing.assert_array_equal(back.batch_score(new), both.batch_score(new))
  np.testing.assert_array_equal(back.score(new), both.score(new))
  assert gate.batch_groups is None and np.array_equal(gate.batch_references, gate.reference_scores)
  with pytest.raises(ValueError, match='mahalanobis'):
    applicability.fit('knn', draw(50), draw(20), levels=levels, batch_blocks=((1,),))


def test_the_knn_score_keeps_one_score_for_the_batch_test():
  """``batch_views`` needs per-group distances; with ``score=knn`` (one block) the batch test
  compares the gate's own score instead of failing after stage 2 trained everything."""
  from segqual_jax.training import train_quality
  config = schema.get_config()
  assert config.applicability.batch_views and train_quality.batch_blocks(config)
  config.applicability.score = 'knn'
  assert train_quality.batch_blocks(config) is None
  config.applicability.score, config.applicability.batch_views = 'mahalanobis', ''
  assert train_quality.batch_blocks(config) is None


def test_reference_split_keeps_a_volume_s_slices_together():
  groups = np.repeat(np.arange(12), 7)  # 12 volumes of 7 slices
  fit, ref = applicability.split_indices(len(groups), 0.3, 0, groups)
  assert not set(groups[fit]) & set(groups[ref])
  assert len(ref) == 28 and len(fit) + len(ref) == len(groups)  # 4 whole volumes: >= 30 % of 84 rounded to 25
  ungrouped = applicability.split_indices(len(groups), 0.3, 0)
  assert len(ungrouped[1]) == 25 and set(groups[ungrouped[0]]) & set(groups[ungrouped[1]])
