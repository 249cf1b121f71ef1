"""Training helpers and scripts/train.py: the LR rule, W&B (offline, never prompting, off), export, presets."""
import json, os, re, subprocess, sys, urllib.error
from pathlib import Path

import numpy as np
import pytest

import helpers as h
from conftest import ROOT, synthetic_kmnist, write_kmnist
from test_calligraphy_data import EXPECTED_REPORT, class_files, img_bytes

CHARS = list('おきすつなはまやれを')


def test_article_rule_on_a_curve_with_known_minimum():
    lrs = np.logspace(-7, 1, 100)
    losses = (np.log10(lrs) - np.log10(3e-3)) ** 2 + 1.0  # lowest at lr = 3e-3
    lr, (lr_min, loss_min) = h.article_rule(lrs, losses, 100)
    assert lr_min == pytest.approx(3e-3, rel=0.1) and loss_min == pytest.approx(1.0, abs=0.01)  # on the sampled grid
    assert lr == pytest.approx(lr_min / 10)


def test_smooth_is_fastais_debiased_ewma():
    assert h.smooth([2.0]) == [pytest.approx(2.0)]  # debiased: the first value is the value itself
    s = h.smooth([1.0] * 50 + [5.0] * 50)
    assert s[49] == pytest.approx(1.0) and 1.0 < s[60] < 5.0 and s[99] < 5.0  # it lags behind a jump


def test_batch_size_plot_labels_each_mean_clear_of_its_seeds():
    runs = [dict(label=l, bs=bs, seed=s, accuracy=a, losses=[2.3, 2.0, 1.5]) for l, bs, accs in
            [('bs 512', 512, (0.80, 0.81)), ('bs 128', 128, (0.95, 0.953)), ('bs 512, lr x10', 512, (0.18, 0.19))]
            for s, a in zip((42, 1), accs)]
    fig = h.plot_batch_size_study(runs)
    ax, renderer = fig.axes[1], fig.canvas.get_renderer()
    assert sorted(t.get_text() for t in ax.texts) == ['mean\n18.5%', 'mean\n80.5%', 'mean\n95.2%']  # the seeds' mean
    assert ax.get_ylim()[0] == pytest.approx(0.08)  # the lowest seed, less 0.1, so every bar shows
    for t in ax.texts:  # the text's top, in data units, is under the lowest seed's dot (0.18), even on the lowest bar
        top = ax.transData.inverted().transform(t.get_window_extent(renderer))[1][1]
        assert ax.get_ylim()[0] < top < 0.18


@pytest.fixture
def kmnist_data(tmp_path):
    write_kmnist(tmp_path / 'kmnist', n_train=200, n_test=50)
    return tmp_path / 'kmnist'


@pytest.fixture
def no_wandb_login(tmp_path, monkeypatch):
    "No key anywhere: W&B must neither prompt nor block."
    monkeypatch.delenv('WANDB_API_KEY', raising=False)
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))  # no ~/.netrc
    monkeypatch.setenv('WANDB_DIR', str(tmp_path))
    monkeypatch.delenv('WANDB_MODE', raising=False)
    return tmp_path


def _tiny_learner(cbs=None, way='tensor'):
    (x, y), _ = synthetic_kmnist(64, 10)
    dls = h.kmnist_dls((x, y), CHARS, way=way, bs=16, device='cpu')
    return h.make_learner(dls, 'kmnist_cnn', cbs=cbs)


def test_wandb_callback_trains_offline_and_export_drops_it(no_wandb_login, tmp_path):
    "WandbCallback crashes in before_fit on fastai 2.8.9-2.8.12 (fastai issue 4173): this fails if that comes back."
    from fastai.callback.wandb import WandbCallback
    from fastai.vision.all import load_learner
    cb = h.start_wandb('offline', config={'test': 1}, dir=tmp_path)
    learn = _tiny_learner(cbs=cb)
    import wandb
    assert wandb.run.config['weights'] == learn.weights == 'random'  # the run records the weights really used
    learn.fit_one_cycle(1, 1e-2)
    run_dirs = list((tmp_path / 'wandb').glob('offline-run-*'))
    assert len(run_dirs) == 1 and list(run_dirs[0].glob('run-*.wandb')), 'offline logs must be on disk'
    h.export(learn, tmp_path / 'm.pkl')
    assert not any(isinstance(c, WandbCallback) for c in load_learner(tmp_path / 'm.pkl').cbs)


def test_a_seed_trains_the_same_model_with_wandb_logging_or_without(no_wandb_login, tmp_path):
    "fastai's WandbCallback draws from the random generators in before_fit; ours leaves them as it found them."
    import torch
    weights = []
    for mode in ('off', 'offline'):
        h.set_seed(42)
        learn = _tiny_learner(cbs=h.start_wandb(mode, dir=tmp_path))
        try: learn.fit(1, 1e-2)
        finally: h.finish_wandb(learn)
        weights.append(torch.cat([p.detach().flatten() for p in learn.model.parameters()]))
    assert torch.equal(*weights)


def test_wandb_online_without_login_falls_back_to_offline(no_wandb_login, tmp_path, capsys):
    cb = h.start_wandb('online', dir=tmp_path)
    assert cb is not None and 'not logged in' in capsys.readouterr().out
    import wandb
    assert wandb.run.settings.mode == 'offline'
    h.finish_wandb()


def test_wandb_off_is_off(no_wandb_login, tmp_path):
    assert h.start_wandb('off') is None and h.start_wandb(None) is None
    with pytest.raises(ValueError): h.start_wandb('sometimes')


def test_pretrained_offline_falls_back_to_random_weights(monkeypatch, capsys):
    import fastai.vision.learner as vl
    real = h.training.vision_learner
    def no_net(*a, pretrained=True, **k):
        if pretrained: raise urllib.error.URLError('no internet')
        return real(*a, pretrained=False, **k)
    monkeypatch.setattr(h.training, 'vision_learner', no_net)
    monkeypatch.delenv('KUZUSHIJI_MIRROR', raising=False)  # no classroom mirror either
    (x, y), _ = synthetic_kmnist(40, 10)
    learn = h.make_learner(h.kmnist_dls((x, y), CHARS, bs=8, device='cpu'), 'resnet18', pretrained=True)
    out = capsys.readouterr().out
    assert 'Going on from RANDOM weights' in out and 'KUZUSHIJI_MIRROR' in out and learn.model is not None
    assert learn.weights == 'random'  # results files must not claim ImageNet weights that never loaded


def run_train(args, tmp_path, timeout=600):
    "scripts/train.py in a subprocess with no terminal and no W&B login."
    env = {**os.environ, 'HOME': str(tmp_path / 'home'), 'WANDB_DIR': str(tmp_path), 'KUZUSHIJI_DATA': str(tmp_path / 'data')}
    env.pop('WANDB_API_KEY', None)
    return subprocess.run([sys.executable, str(ROOT / 'scripts' / 'train.py'), *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_train_quick_writes_results(kmnist_data, tmp_path):
    out = tmp_path / 'r' / 'results.json'
    p = run_train(['--dataset', 'kmnist', '--data', str(kmnist_data), '--out', str(out), '--preset', 'quick',
                   '--wandb', 'offline'], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(out.read_text())
    for k in ('test_accuracy', 'valid_accuracy', 'history', 'seconds', 'images_per_second', 'device', 'versions', 'config'):
        assert k in r, k
    assert 0 <= r['test_accuracy'] <= 1 and r['n_test'] == 50 and r['n_train'] + r['n_valid'] == 200
    assert len(r['history']) == r['config']['epochs'] == 3 and r['images_per_second'] > 0
    assert r['versions']['fastai'] == '2.8.8' and r['config']['arch'] == 'kmnist_cnn' and r['weights'] == 'random'
    assert list((tmp_path / 'wandb').glob('offline-run-*')), 'the offline W&B run is on disk'
    assert not list(out.parent.glob('*.tmp'))
    # stdout is a pipe here, as in `setup.sh > log` or CI: one line per epoch, not every update of a progress bar
    epochs = re.findall(r'^epoch (\d)  train_loss [\d.]+  valid_loss [\d.]+  accuracy [\d.]+  error_rate [\d.]+  time [\d:]+$',
                        p.stdout, re.M)
    assert epochs == ['0', '1', '2'] and '\r' not in p.stdout + p.stderr and len(p.stdout) < 2000, p.stdout[-3000:]
    from fastai.learner import load_learner
    cbs = [type(c).__name__ for c in load_learner(r['model']).cbs]  # the exported model shows bars where it is loaded
    assert 'ProgressCallback' in cbs and 'EpochLines' not in cbs, cbs


def test_train_overrides_and_wandb_off(kmnist_data, tmp_path):
    import train
    out = tmp_path / 'o.json'
    assert train.main(['--data', str(kmnist_data), '--out', str(out), '--preset', 'quick', '--epochs', '1',
                       '--bs', '16', '--lr', '3e-3', '--seed', '7', '--wandb', 'off']) == 0
    r = json.loads(out.read_text())
    assert (r['config']['epochs'], r['config']['bs'], r['lr'], r['config']['seed']) == (1, 16, 3e-3, 7)
    assert not (tmp_path / 'wandb').exists()


def test_train_auto_preset_follows_the_hardware(kmnist_data, tmp_path, monkeypatch, capsys):
    import train
    monkeypatch.setattr(h.presets, 'on_gpu', lambda: True)
    assert h.auto_preset() == 'article'
    monkeypatch.setattr(h.presets, 'on_gpu', lambda: False)
    out = tmp_path / 'a.json'
    assert train.main(['--data', str(kmnist_data), '--out', str(out), '--epochs', '1', '--wandb', 'off']) == 0
    assert 'preset cpu (auto: no GPU)' in capsys.readouterr().out  # never hours of ResNet34 on a CPU by default
    assert json.loads(out.read_text())['config']['preset'] == 'cpu'


@pytest.mark.parametrize('args', [['--n-per-class', '5'], ['--preset', 'cpu', '--pretrained']])
def test_train_rejects_flags_that_would_be_ignored(args, tmp_path, capsys):
    import train
    with pytest.raises(SystemExit) as e: train.main(['--out', str(tmp_path / 'x.json'), *args])
    assert e.value.code == 2 and not (tmp_path / 'x.json').exists()


def test_train_missing_data_is_a_clear_error(tmp_path, capsys):
    import train
    assert train.main(['--data', str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'x.json'), '--preset', 'quick',
                       '--wandb', 'off']) == 1
    assert 'download_data.py' in capsys.readouterr().err and not (tmp_path / 'x.json').exists()


def make_calligraphy_folders(root, extra=12):
    "The planted-fault class folders of test_calligraphy_data plus `extra` distinct images per class."
    for i, (c, files) in enumerate(class_files().items()):
        d = os.path.join(os.fsencode(root), c.encode()); os.makedirs(d, exist_ok=True)
        for n, data in files.items():
            with open(os.path.join(d, n), 'wb') as f: f.write(data)
        for j in range(extra):
            with open(os.path.join(d, f'extra_{j}.jpg'.encode()), 'wb') as f:
                f.write(img_bytes(160 + 8 * j, 200, seed=1000 * (i + 1) + j))
    return Path(root)


def test_calligraphy_no_flips(tmp_path):
    from fastai.vision.all import Dihedral, Flip, Normalize
    src = make_calligraphy_folders(tmp_path / 'src', extra=3)
    dls = h.calligraphy_dls(h.prepare(src, tmp_path / 'prep', quiet=True)['path'], size=64, bs=4, device='cpu')
    tfms = [type(t) for t in dls.train.after_batch.fs]
    assert Flip not in tfms and Dihedral not in tfms and Normalize in tfms


def test_train_calligraphy_quick_progressive_resizing(tmp_path):
    src = make_calligraphy_folders(tmp_path / 'src')
    out = tmp_path / 'c.json'
    p = run_train(['--dataset', 'calligraphy', '--data', str(src), '--out', str(out), '--preset', 'quick',
                   '--n-per-class', '6', '--wandb', 'off'], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(out.read_text())
    assert [s['size'] for s in r['stages']] == [128, 256] and r['n_train'] + r['n_valid'] == 3 * 6
    assert [s['seen_sizes'] for s in r['stages']] == [[[128, 128]], [[256, 256]]]  # what the model really saw
    assert all(0 <= s['valid_accuracy'] <= 1 for s in r['stages']) and r['test_accuracy'] is None
    expected = {e for e in EXPECTED_REPORT if e[1]}  # these folders hold only the class folders
    got = {(s['file'], s['class'], s['reason'][:len(e[2])]) for s in r['skipped'] for e in expected
           if (s['file'], s['class']) == e[:2]}
    assert got == expected and len(r['skipped']) == len(expected)
    assert {x['phase'] for x in r['history']} == {'frozen', 'unfrozen'}


@pytest.mark.parametrize('way', ['tensor', 'datablock'])
def test_interpretation_sees_every_class(way):
    "A plain-list vocab made fastai's ClassificationInterpretation see one class (a 1x1 confusion matrix)."
    from fastai.vision.all import ClassificationInterpretation
    learn = _tiny_learner(way=way)
    interp = ClassificationInterpretation.from_learner(learn)
    assert list(interp.vocab) == CHARS and interp.confusion_matrix().shape == (10, 10)
    assert interp.confusion_matrix().sum() == len(learn.dls.valid_ds)


def test_compare_recipes_chooses_on_validation_only(kmnist_data, tmp_path, monkeypatch, capsys):
    "tools/compare_recipes.py: seeds of the preset, a variant, verdicts against the spread, and no test set read."
    import compare_recipes
    def no_test(*a, **k): raise AssertionError('compare_recipes must not read the test set')
    monkeypatch.setattr(h.training, 'test_dl', no_test)
    monkeypatch.setattr(h.recipes, 'test_dl', no_test)
    out = tmp_path / 'c.json'
    assert compare_recipes.main(['--data', str(kmnist_data), '--quick', '--seeds', '42', '1', '--vary', 'max_warp=0.1',
                                 '--vary', 'label_smoothing=False', '--out', str(out)]) == 0
    r = json.loads(out.read_text())
    assert [(x['variant'], x['seed']) for x in r['runs']] == [('preset', 42), ('preset', 1), ('max_warp=0.1', 42),
                                                             ('label_smoothing=False', 42)]
    accs = [x['valid_accuracy'] for x in r['runs'][:2]]
    assert r['spread'] == pytest.approx(max(accs) - min(accs)) and r['mean'] == pytest.approx(sum(accs) / 2)
    assert r['complete'] and r['valid'] == 'random' and r['test_like_auc'] is None
    for v, run in zip(r['variants'], r['runs'][2:]):
        d = run['valid_accuracy'] - r['mean']
        assert v['difference'] == pytest.approx(d)
        assert v['verdict'] == ('tie (within the spread)' if abs(d) <= r['spread'] else 'better' if d > 0 else 'worse')
    assert 'spread (max - min)' in capsys.readouterr().out


def test_compare_recipes_can_validate_on_the_test_like_tenth(kmnist_data, tmp_path, monkeypatch):
    "`--valid test-like`: the likeness is computed once, and every run validates on the images most like the test set."
    import compare_recipes
    def no_test(*a, **k): raise AssertionError('compare_recipes must not read the test set')
    monkeypatch.setattr(h.training, 'test_dl', no_test)
    monkeypatch.setattr(h.recipes, 'test_dl', no_test)
    (x, _), (x_test, _), _ = h.load_arrays(kmnist_data)
    likeness = np.random.default_rng(0).random(len(x))
    calls, seen = [], []
    def fake_likeness(a, b, epochs): calls.append((len(a), len(b), epochs)); return likeness, 0.66
    monkeypatch.setattr(h, 'test_likeness', fake_likeness)
    real = h.training.kmnist_dls
    monkeypatch.setattr(h.training, 'kmnist_dls', lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    out = tmp_path / 'c.json'
    assert compare_recipes.main(['--data', str(kmnist_data), '--preset', 'best-cpu', '--quick', '--seeds', '42', '1',
                                 '--set', 'stroke=0.0', '--vary', 'stroke=0.5', '--valid', 'test-like',
                                 '--out', str(out)]) == 0
    r = json.loads(out.read_text())
    assert calls == [(len(x), len(x_test), 1)] and r['valid'] == 'test-like' and r['test_like_auc'] == 0.66
    most_like = x[np.sort(np.argsort(-likeness)[:len(x) // 10])]
    assert len(seen) == 3 and all(np.array_equal(d.valid_ds.x.numpy(), most_like) for d in seen)
    assert [run['n_valid'] for run in r['runs']] == [len(x) // 10] * 3
    assert any(isinstance(t, h.StrokeWidth) for t in seen[2].train.after_batch.fs)  # the variant's recipe
    assert not any(isinstance(t, h.StrokeWidth) for d in seen[:2] for t in d.train.after_batch.fs)  # --set: the preset's
    assert r['config']['stroke'] == 0.0 and h.make_config('kmnist', 'best-cpu')['stroke'] > 0      # own is changed
    assert r['set'] == {'stroke': 0.0}


def test_the_test_like_set_does_not_hang_on_a_timing(monkeypatch):
    """Which compute mode `cpu_settings` times fastest can change from run to run; the likeness scores, and so the
    test-like validation set that `compare_recipes.py --reuse` matches on, must not change with it."""
    def no_timing(*a, **k): raise AssertionError('test_likeness must not time the CPU')
    monkeypatch.setattr(h.speed, 'step_seconds', no_timing)
    monkeypatch.setattr(h.speed, '_MEASURED', {})  # nothing measured before, in this process
    (x, _), (x_test, _) = synthetic_kmnist(256, 256)
    first, again = h.test_likeness(x, x_test, epochs=1), h.test_likeness(x, x_test, epochs=1)
    assert np.array_equal(first[0], again[0]) and first[1] == again[1]


def test_compare_recipes_rejects_an_unknown_setting(tmp_path, capsys):
    import compare_recipes
    with pytest.raises(SystemExit) as e:
        compare_recipes.main(['--vary', 'warp=0.1', '--out', str(tmp_path / 'x.json')])
    assert e.value.code == 2 and 'unknown setting warp' in capsys.readouterr().err and not (tmp_path / 'x.json').exists()
    with pytest.raises(SystemExit) as e:
        compare_recipes.main(['--set', 'strokes=0.5', '--out', str(tmp_path / 'x.json')])
    assert e.value.code == 2 and 'unknown setting strokes' in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        compare_recipes.main(['--set', 'seed=1', '--out', str(tmp_path / 'x.json')])
    assert e.value.code == 2 and 'give the seeds there' in capsys.readouterr().err


def test_compare_recipes_reuses_earlier_runs_and_varies_several_settings(kmnist_data, tmp_path, monkeypatch, capsys):
    """`--reuse`: a run made before with the same config on the same validation images is read, not trained again;
    `--vary "A=1 B=2"` is one variant with two settings changed."""
    import compare_recipes
    first, second = tmp_path / 'first.json', tmp_path / 'second.json'
    common = ['--data', str(kmnist_data), '--quick', '--seeds', '42', '1']
    assert compare_recipes.main(common + ['--vary', 'max_warp=0.1', '--out', str(first)]) == 0
    trained, real = [], h.run_training
    monkeypatch.setattr(h, 'run_training', lambda cfg, *a, **k: trained.append(dict(cfg)) or real(cfg, *a, **k))
    assert compare_recipes.main(common + ['--vary', 'max_warp=0.1 label_smoothing=False', '--vary', 'max_warp=0.1',
                                          '--reuse', str(first), '--out', str(second)]) == 0
    assert [(c['max_warp'], c['label_smoothing'], c['seed']) for c in trained] == [(0.1, False, 42)]  # the new one only
    old, new = json.loads(first.read_text()), json.loads(second.read_text())
    assert [(r['variant'], r['seed']) for r in new['runs']] == [
        ('preset', 42), ('preset', 1), ('max_warp=0.1 label_smoothing=False', 42), ('max_warp=0.1', 42)]
    reused = [r for r in new['runs'] if 'reused_from' in r]
    assert [r['valid_accuracy'] for r in reused] == [r['valid_accuracy'] for r in old['runs']]
    assert all(r['reused_from'] == str(first) for r in reused) and new['mean'] == pytest.approx(old['mean'])
    assert new['runs'][2]['change'] == {'max_warp': 0.1, 'label_smoothing': False}
    out = capsys.readouterr().out
    assert 'from ' + str(first) in out and 'compute modes' not in out  # all trained alike here
    # Reused runs that trained in another compute mode (cpu_settings times it in each process): it says so
    mixed = tmp_path / 'mixed.json'
    mixed.write_text(json.dumps({**old, 'runs': [{**old['runs'][0], 'computes': 'float32, elsewhere'}] + old['runs'][1:]}))
    assert compare_recipes.main(common + ['--vary', 'max_warp=0.1', '--reuse', str(mixed),
                                          '--out', str(tmp_path / 'mixed-out.json')]) == 0
    assert len(trained) == 1 and 'these runs trained in 2 compute modes' in capsys.readouterr().out
    # Files written before runs recorded their change (named NAME=VALUE), and values whose repr has spaces
    older = tmp_path / 'older.json'
    older.write_text(json.dumps({**old, 'runs': [{k: v for k, v in r.items() if k != 'change'} for r in old['runs']]}))
    runs = compare_recipes.earlier_runs(compare_recipes.read_results([older]), 'random', None)
    assert sorted(r['valid_accuracy'] for r in runs.values()) == sorted(r['valid_accuracy'] for r in old['runs'])
    odd = tmp_path / 'odd.json'
    odd.write_text(json.dumps({**old, 'runs': [{**old['runs'][0], 'variant': 'size=(28, 28)', 'change': {'size': [28, 28]}}]}))
    assert len(compare_recipes.earlier_runs(compare_recipes.read_results([odd]), 'random', None)) == 1
    # A setting presets gained later (compare_recipes.LATER), at its old value: the same run as one without it
    assert 'stretch' not in old['config']  # the cpu preset has no stretch: as a file written before it existed
    runs = compare_recipes.earlier_runs(compare_recipes.read_results([first]), 'random', None)
    assert compare_recipes.key({**old['config'], 'stretch': 0., 'seed': 42}) in runs
    assert compare_recipes.key({**old['config'], 'stretch': 0.5, 'seed': 42}) not in runs
    # Other validation images: nothing is reused, and it says so
    (tmp_path / 'other.json').write_text(json.dumps({**old, 'valid': 'test-like', 'test_like_auc': 0.7}))
    assert compare_recipes.earlier_runs(compare_recipes.read_results([tmp_path / 'other.json']), 'random', None) == {}
    assert 'skipped, it validated on other images' in capsys.readouterr().out
    # Not a results file, or --out among the --reuse files: one clear line, before any training, nothing written
    monkeypatch.setattr(h, 'run_training', lambda *a, **k: pytest.fail('trained before checking --reuse'))
    for text in ['{"valid": "random"}', '[1, 2]', 'not json', '{"config": {}, "runs": [{"seed": 1}]}',
                 '{"config": {}, "runs": [{"variant": "no setting", "seed": 1, "valid_accuracy": 0.5}]}']:
        (tmp_path / 'bad.json').write_text(text)
        assert compare_recipes.main(common + ['--reuse', str(first), str(tmp_path / 'bad.json'),
                                              '--out', str(tmp_path / 'x.json')]) == 1
        assert f"error: --reuse {tmp_path / 'bad.json'}: " in capsys.readouterr().err
    assert not (tmp_path / 'x.json').exists()
    with pytest.raises(SystemExit) as e: compare_recipes.main(common + ['--reuse', str(first), '--out', str(first)])
    assert e.value.code == 2 and 'would be overwritten' in capsys.readouterr().err
