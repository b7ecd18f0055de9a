#!/usr/bin/env python
"""MONAI's side of the recipe benchmarks; runs in .venv-bench (PyTorch CPU + MONAI), never in the test environments.

Two commands, each called by a benchmark under benchmarks/ that runs unet3d's
side in the same session:

- ``transforms``: times MONAI's equivalent of the nnunet recipe's training
  sample (RandCropByPosNegLabeld with stored foreground/background indices,
  one positive in three as nnU-Net's 0.33; RandRotated, RandZoomd,
  RandGaussianNoised, RandGaussianSmoothd, RandScaleIntensityd,
  RandSimulateLowResolutiond, RandAdjustContrastd inverted and plain with
  statistics kept, RandFlipd on each axis) over cases held in memory, with
  ``--threads`` DataLoader workers (one torch thread each), and prints
  ``volumes/s X``.
- ``train``: trains MONAI's DynUNet the nnU-Net way (the same augmentations
  and foreground sampling, SGD with Nesterov momentum 0.99 from 0.01 with poly
  decay, weight decay 3e-5, gradient norm clipped at 12, deep supervision, the
  BraTS region outputs WT/TC/ET with Dice + BCE) on the given training cases,
  then predicts each test folder with sliding windows (overlap 0.5, Gaussian
  blending) and writes BraTS-labelled NIfTI files that ``cli.py score`` reads.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import nibabel as nib
import numpy as np
import torch

CHANNELS = ("t1", "t1ce", "t2", "flair")


def nnunet_like_transforms(crop, *, with_crop: bool = True, regions: bool = False):
    """MONAI transforms matching the nnunet recipe's sampling and augmentation (see the module docstring)."""
    from monai import transforms as mt

    keys = ["image", "label"]
    chain = []
    if regions:
        chain.append(mt.ConvertToMultiChannelBasedOnBratsClassesd(keys="label"))
    if with_crop:
        chain.append(mt.RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=list(crop), pos=1, neg=2,
                                               num_samples=1, fg_indices_key="fg", bg_indices_key="bg",
                                               allow_smaller=True))
        chain.append(mt.SpatialPadd(keys=keys, spatial_size=list(crop)))
    angle = math.radians(30.0)
    label_mode = "nearest"
    chain += [
        mt.RandRotated(keys=keys, range_x=angle, range_y=angle, range_z=angle, prob=0.2, keep_size=True,
                       mode=("bilinear", label_mode), padding_mode="zeros"),
        mt.RandZoomd(keys=keys, prob=0.2, min_zoom=0.7, max_zoom=1.4, mode=("trilinear", label_mode),
                     keep_size=True),
        mt.RandGaussianNoised(keys="image", prob=0.1, std=math.sqrt(0.1)),
        mt.RandGaussianSmoothd(keys="image", prob=0.2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
        mt.RandScaleIntensityd(keys="image", prob=0.15, factors=0.25),
        mt.RandSimulateLowResolutiond(keys="image", prob=0.25, zoom_range=(0.5, 1.0)),
        mt.RandAdjustContrastd(keys="image", prob=0.1, gamma=(0.7, 1.5), invert_image=True, retain_stats=True),
        mt.RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.7, 1.5), retain_stats=True),
        mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
    ]
    return mt.Compose(chain)


def _indices(label: np.ndarray):
    flat = label.ravel()
    return np.flatnonzero(flat > 0), np.flatnonzero(flat == 0)


class _Samples(torch.utils.data.Dataset):
    """``count`` training samples drawn from in-memory cases (case i % n), each through ``transform``."""

    def __init__(self, cases, transform, count: int):
        self.cases, self.transform, self.count = cases, transform, count

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        case = self.cases[index % len(self.cases)]
        sample = self.transform(dict(case))
        sample = sample[0] if isinstance(sample, list) else sample
        return sample["image"], sample["label"]


def _worker_init(_):
    torch.set_num_threads(1)


def _loader(cases, transform, *, count: int, threads: int, batch_size: int, seed: int):
    from monai.utils import set_determinism

    set_determinism(seed)
    dataset = _Samples(cases, transform, count)
    if threads <= 1:
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=0)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=threads,
                                       worker_init_fn=_worker_init, persistent_workers=False, prefetch_factor=2)


# ------------------------------------------------------------------ transforms
def command_transforms(options) -> int:
    cases = []
    for name in sorted(os.listdir(options.cases)):
        if name.endswith(".npz"):
            with np.load(os.path.join(options.cases, name)) as stored:
                image = stored["image"].astype(np.float32)  # [x, y, z, C] as unet3d stores it
                label = stored["label"].astype(np.uint8)
            mean = np.array([image[..., c][image[..., c] > 0].mean() for c in range(image.shape[-1])], np.float32)
            std = np.array([image[..., c][image[..., c] > 0].std() for c in range(image.shape[-1])], np.float32)
            image = np.where(image > 0, (image - mean) / (std + 1e-8), 0.0).astype(np.float32)
            foreground, background = _indices(label)
            cases.append({"image": np.ascontiguousarray(np.moveaxis(image, -1, 0)), "label": label[None],
                          "fg": foreground, "bg": background})
    torch.set_num_threads(1)  # one core per loader thread, as nnU-Net's and MONAI's worker processes use
    transform = nnunet_like_transforms(options.shape)
    total = options.warmup + options.samples
    loader = _loader(cases, transform, count=total, threads=options.threads, batch_size=1, seed=0)
    started = None
    for index, _ in enumerate(loader):
        if index + 1 == options.warmup:
            started = time.perf_counter()
    elapsed = time.perf_counter() - started
    rate = options.samples / elapsed
    print("monai transforms, {} thread(s): volumes/s {:.3f}".format(options.threads, rate))
    if options.json:
        with open(options.json, "w") as handle:
            json.dump({"threads": options.threads, "volumes_per_second": rate, "samples": options.samples,
                       "monai": __import__("monai").__version__, "torch": torch.__version__}, handle)
    return 0


# ------------------------------------------------------------------ train and predict
def _load_case(images, segmentation=None):
    """float32 [C, x, y, z] z-scored inside the brain per channel (nnU-Net's BraTS normalisation), label, affine."""
    volumes = [np.asarray(nib.load(images[channel]).dataobj, dtype=np.float32) for channel in CHANNELS]
    image = np.stack(volumes)
    mask = image.sum(axis=0) > 0
    for channel in range(len(CHANNELS)):
        values = image[channel][mask]
        image[channel] = np.where(mask, (image[channel] - values.mean()) / (values.std() + 1e-8), 0.0)
    label = None
    if segmentation is not None:
        label = np.asarray(nib.load(segmentation).dataobj).astype(np.uint8)
    return image, label, nib.load(images[CHANNELS[0]]).affine


def _network(options):
    from monai.networks.nets import DynUNet

    depth = options.depth
    filters = [min(options.base_filters * 2 ** level, options.max_filters) for level in range(depth)]
    return DynUNet(spatial_dims=3, in_channels=len(CHANNELS), out_channels=3, kernel_size=[3] * depth,
                   strides=[1] + [2] * (depth - 1), upsample_kernel_size=[2] * (depth - 1), filters=filters,
                   norm_name=("INSTANCE", {"affine": True}), act_name=("leakyrelu", {"negative_slope": 0.01}),
                   deep_supervision=True, deep_supr_num=depth - 2, res_block=False)


def _deep_supervision_loss(loss, outputs, target):
    """Weights 1/2^i per level, normalised to sum to 1 (as unet3d's --deep_supervision weighs its outputs)."""
    levels = outputs.shape[1]
    weights = np.array([1.0 / 2 ** level for level in range(levels)])
    weights = weights / weights.sum()
    return sum(float(weights[level]) * loss(outputs[:, level], target) for level in range(levels))


# MONAI's ConvertToMultiChannelBasedOnBratsClasses stacks its channels as TC, WT, ET (in that order).
MONAI_REGION_ORDER = ("TC", "WT", "ET")


def _paint(probabilities):
    """BraTS 2019 labels from MONAI's region probabilities (channels TC, WT, ET): the innermost region above 0.5
    (4 ET, 1 TC, 2 WT)."""
    regions = dict(zip(MONAI_REGION_ORDER, probabilities > 0.5))
    label = np.zeros(regions["WT"].shape, np.uint8)
    label[regions["WT"]] = 2
    label[regions["WT"] & regions["TC"]] = 1
    label[regions["WT"] & regions["TC"] & regions["ET"]] = 4
    return label


def _check_painting(label):
    """Painting MONAI's region channels of a truth must give the truth back (it did not once: WT and TC were
    swapped and the WT scores of the first 4000-step row were TC's)."""
    from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses

    channels = np.asarray(ConvertToMultiChannelBasedOnBratsClasses()(label)).astype(np.float32)
    if not np.array_equal(_paint(channels), label):
        raise SystemExit("monai_side: painting MONAI's region channels does not give the labels back")


def command_train(options) -> int:
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.utils import set_determinism

    torch.set_num_threads(options.threads)
    set_determinism(options.seed)
    with open(options.cases) as handle:
        training_cases = json.load(handle)
    cases = []
    for case in training_cases:
        image, label, _ = _load_case(case["images"], case["segmentation"])
        foreground, background = _indices(label)
        cases.append({"image": image, "label": label[None], "fg": foreground, "bg": background})
    _check_painting(cases[0]["label"][0])
    crop = options.crop
    transform = nnunet_like_transforms(crop, regions=True)
    network = _network(options)
    loss = DiceCELoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)
    optimizer = torch.optim.SGD(network.parameters(), lr=options.learning_rate, momentum=0.99, nesterov=True,
                                weight_decay=3e-5)
    loader = _loader(cases, transform, count=options.steps * options.batch_size, threads=options.loader_threads,
                     batch_size=options.batch_size, seed=options.seed)
    network.train()
    began = time.time()
    for step, (image, label) in enumerate(loader):
        for group in optimizer.param_groups:
            group["lr"] = options.learning_rate * (1 - step / options.steps) ** 0.9
        optimizer.zero_grad()
        outputs = network(torch.as_tensor(image))
        value = _deep_supervision_loss(loss, outputs, torch.as_tensor(label).float())
        value.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
        optimizer.step()
        if (step + 1) % options.log_every == 0:
            print("step {}/{} loss {:.4f} {:.1f} s".format(step + 1, options.steps, float(value), time.time() - began),
                  flush=True)
    network.eval()
    if options.save:
        os.makedirs(os.path.dirname(os.path.abspath(options.save)), exist_ok=True)
        torch.save(network.state_dict(), options.save)
    for test_dir, out_dir in zip(options.test_dirs, options.out_dirs):
        os.makedirs(out_dir, exist_ok=True)
        for case_id, images in _raw_cases(test_dir):
            image, _, affine = _load_case(images)
            with torch.no_grad():
                logits = sliding_window_inference(torch.as_tensor(image[None]), roi_size=list(crop), sw_batch_size=1,
                                                  predictor=network, overlap=0.5, mode="gaussian")
            label = _paint(torch.sigmoid(logits)[0].numpy())
            nib.save(nib.Nifti1Image(label, affine), os.path.join(out_dir, case_id + ".nii.gz"))
    print("trained {} steps in {:.0f} s".format(options.steps, time.time() - began))
    return 0


def _raw_cases(folder):
    """(case id, {channel: path}) of every BraTS 2019-style case folder under ``folder`` (HGG/, LGG/ or flat)."""
    found = []
    for root, _, _ in os.walk(folder):
        case_id = os.path.basename(root)
        names = {channel: os.path.join(root, "{}_{}.nii.gz".format(case_id, channel)) for channel in CHANNELS}
        if all(os.path.isfile(path) for path in names.values()):
            found.append((case_id, names))
    return sorted(found)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    timing = commands.add_parser("transforms", help="time MONAI's nnU-Net-like training sample")
    timing.add_argument("--cases", required=True, help="folder of <case>.npz (image uint8 [x,y,z,C], label)")
    timing.add_argument("--shape", type=int, nargs=3, default=[128, 128, 128])
    timing.add_argument("--threads", type=int, default=1, help="DataLoader workers (1: in-process)")
    timing.add_argument("--samples", type=int, default=40)
    timing.add_argument("--warmup", type=int, default=4)
    timing.add_argument("--json", default=None)
    train = commands.add_parser("train", help="train DynUNet the nnU-Net way and predict test folders")
    train.add_argument("--cases", required=True, help="JSON list of {images: {channel: path}, segmentation}")
    train.add_argument("--test_dirs", nargs="+", required=True)
    train.add_argument("--out_dirs", nargs="+", required=True)
    train.add_argument("--crop", type=int, nargs=3, required=True)
    train.add_argument("--steps", type=int, required=True)
    train.add_argument("--batch_size", type=int, default=2)
    train.add_argument("--base_filters", type=int, default=8)
    train.add_argument("--max_filters", type=int, default=64)
    train.add_argument("--depth", type=int, default=4)
    train.add_argument("--learning_rate", type=float, default=0.01)
    train.add_argument("--seed", type=int, default=1)
    train.add_argument("--threads", type=int, default=2, help="torch threads of the training step")
    train.add_argument("--loader_threads", type=int, default=1, help="DataLoader workers (1: in-process)")
    train.add_argument("--log_every", type=int, default=100)
    train.add_argument("--save", default=None, help="write the trained network's state_dict here")
    options = parser.parse_args(argv)
    if options.command == "transforms":
        return command_transforms(options)
    if len(options.test_dirs) != len(options.out_dirs):
        parser.error("--test_dirs and --out_dirs must pair up")
    return command_train(options)


if __name__ == "__main__":
    sys.exit(main())
