"""The shared helpers of the series, one module per concern. Each module imports only the ones above it:

    settings     paths, quick mode, the device, library versions, atomic JSON
    catalogue    the official files, URLs and md5s; class names and romaji
    archives     md5 checks, safe tar and zip extraction
    cleaning     a clean, resized copy of messy web images (the calligraphy set)
    downloads    mirrors, resume, retries, verification; ImageNet weights from a classroom mirror
    arrays       npz / MNIST idx / class map into NumPy, checked
    dataloaders  NumPy arrays to fastai DataLoaders: the DataBlock way and the fast tensor way
    plots        examples per class, class balance, the downloaded files
    lr           lr_find with the article's rule, the raw and smoothed losses
    tracking     Weights & Biases, offline by default
    speed        the fastest way to train on this CPU, measured: channels_last, bfloat16 where it pays
    presets      each recipe's settings by name, and one run's config
    recipes      beyond the article: augmentation for brush strokes, random erasing, mixup, scoring with TTA and ensembles
    training     models, learners, one reproducible run of a preset, export, the batch-size study's plot
    validation   a validation set that looks like the test set (adversarial validation)
    calligraphy  calligraphy DataLoaders and progressive resizing
    kanji        Kuzushiji-Kanji: class folders by code point, labels as characters, a split by file-name hash, arrays
    longtail     the long tail: scores by bucket, logit adjustment, classifier retraining, nearest class mean, reject
    kanji_training  notebook 08's recipe as one run (train.py --dataset kkanji)
    inference    preprocessing per kind of input (drawing, character image, photo), loading a model, top-k
    page         what the app's pages show, without Gradio: their font, images as PNG, training examples beside an answer
    app          the Gradio web app around inference (not imported here: `import helpers.app` loads Gradio, which
                 takes seconds that every other notebook and script would pay for nothing)
    web          the model for the static web page: ONNX export checked against fastai, 8 bits checked, labels, font,
                 examples, the "not sure" threshold

Notebooks and scripts write `import helpers` and `helpers.<name>`: this file only hands the public names on,
so `helpers.kmnist_dls` is `helpers.dataloaders.kmnist_dls`."""
from .settings import (DATA_DIR, OUT_DIR, QUICK, REPO_URL, ROOT, cpu_flags, cpu_has_bf16, device_name, on_gpu, set_seed,
                       synchronize, use_fp16, versions, write_json)
from .catalogue import (CALLIGRAPHY_CLASSES, CALLIGRAPHY_COMMIT, CALLIGRAPHY_NAMES, CALLIGRAPHY_REPO, CALLIGRAPHY_URL,
                        CALLIGRAPHY_ZIP, DESCRIPTIONS, FILES, FORMATS, HOSTS, KNOWN_MIRRORS, MIRROR_ENV, OFFICIAL_URL,
                        ROMAJI, dataset_files, list_files)
from .archives import DownloadError, extract_tar, extract_zip, md5sum, readable
from .cleaning import MANIFEST_COLUMNS, REPORT_COLUMNS, calligraphy_report, prepare, read_report, shrink, to_rgb
from .downloads import download, download_file, download_weights, install_weights, weight_file
from .arrays import DataFormatError, load_arrays, load_classmap, load_idx, load_npz, split_indices, subsample
from .dataloaders import (ArrayDataset, ArrayDL, benchmark_loader, char_augment, image_stats, item_image, item_label,
                          kmnist_dls, test_dl, training_speed)
from .plots import class_counts, file_table, japanese_font, label_name, plot_class_balance, show_examples
from .lr import RawLossRecorder, article_rule, find_lr, plot_lr_find, smooth
from .tracking import SeededWandbCallback, finish_wandb, start_wandb, wandb_logged_in
from .presets import CALLIGRAPHY_PRESETS, KANJI_PRESETS, PRESETS, auto_preset, make_config
from .recipes import (ElasticWarp, EraseStrokes, Stretch, StrokeWidth, brush_augment, get_probs, hard_cases, mixing_callback,
                      plot_hard_cases, score, scores)
from .speed import CPUSpeedups, cpu_settings, speed_summary
from .training import (ARCHS, export, history, kmnist_cnn, kmnist_cnn_deep, kmnist_cnn_wide, learner_for, load_for,
                       make_learner, pick_lr, plot_batch_size_study, run_training, trainable_share, unfreeze_pretrained)
from .validation import test_like_split, test_likeness
from .calligraphy import SeenSizes, calligraphy_dls, calligraphy_folder, limit_per_class, progressive_resizing
from .kanji import char_of, code_point, kanji_files, kanji_label, load_kanji, split_parts
from .longtail import (BUCKETS, LogitAdjust, NearestMean, bucket_of, choose_threshold, long_tail_report, reject_curve,
                       report_row, retrain_classifier)
from .kanji_training import kanji_cnn, run_kanji, with_method
from .inference import (COMMANDS, InputError, NoInk, as_drawing, as_photo, char_input, ink, input_size, is_kmnist_image, kmnist_input,
                        label_text, latency, load_model, model_kind, photo_input, predict, predict_files, prepare_input,
                        probabilities, read_image, top_k)
from .page import page_labels
from .web import (ExportError, check_onnx, check_quantized, check_sample, export_onnx, export_page, not_sure_below,
                  onnx_probabilities, quantize)
