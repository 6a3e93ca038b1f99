"""VanillaPipeline plus the stage switch (masks and their 3D scales) and segmentation metrics in ns-eval."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, Literal, Optional, Type

import torch
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE
from tqdm import tqdm

from segsplat_ns.base_model import SegSplatModel, SegSplatModelConfig
from segsplat_ns.contract import TrainingViews
from segsplat_ns.datamanager import SegSplatDataManager, SegSplatDataManagerConfig
from segsplat_ns.errors import user_error_types
from segsplat_ns.masks.scales import ScaleQuantiles, mask_scales


@dataclass
class SegSplatPipelineConfig(VanillaPipelineConfig):
    _target: Type = field(default_factory=lambda: SegSplatPipeline)
    datamanager: SegSplatDataManagerConfig = field(default_factory=SegSplatDataManagerConfig)
    model: SegSplatModelConfig = field(default_factory=SegSplatModelConfig)
    eval_threshold: Optional[float] = None
    """Similarity threshold used by the click protocol in ns-eval (default: the segmenter's)."""


class SegSplatPipeline(VanillaPipeline):
    config: SegSplatPipelineConfig
    datamanager: SegSplatDataManager
    model: SegSplatModel

    def __init__(
        self,
        config: SegSplatPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Optional[torch.cuda.amp.GradScaler] = None,
    ):
        from segsplat_ns.compat.configs import fill_missing_defaults

        fill_missing_defaults(config)  # a run saved by an older segsplat_ns lacks the fields added since
        if test_mode != "val" and config.model.init_from is not None:
            # ns-eval / ns-viewer load our own checkpoint, which already holds everything init_from gave
            config.model.init_from = None
        try:
            super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
            if test_mode == "val":
                # everything the feature stage will need, checked before the RGB stage spends its time
                self.datamanager.check_feature_inputs()
                config.datamanager.language.check_available(self.datamanager.data_dir)
        except user_error_types() as error:
            raise SystemExit(f"error: {error}") from None  # a clear line from inside ns-train, not a traceback
        from segsplat_ns.viewer import SegmentationControls

        # the web viewer's segmentation panel (parameter-free: the state dict is unchanged)
        self.segmentation = SegmentationControls(self)

    def get_training_callbacks(self, training_callback_attributes):
        from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

        # the trainer, to save the RGB stage before the feature stage is prepared (see checkpoint_rgb_stage)
        self._trainer = getattr(training_callback_attributes, "trainer", None)
        self.fix_feature_stage_length()
        callbacks = super().get_training_callbacks(training_callback_attributes)
        finish = TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self.finish_if_last_step,
                                  update_every_num_iters=1)  # fmt: skip
        return callbacks + [finish]

    def fix_feature_stage_length(self) -> None:
        """A model with ``feature_stage_steps`` ends the run that many steps after its feature stage starts (the
        trainer reads ``max_num_iterations`` when its loop starts, after the callbacks are made)."""
        trainer, steps = getattr(self, "_trainer", None), self.model.feature_stage_steps
        if trainer is None or steps is None:
            return
        total = max(self.model.feature_start_step + steps - trainer._start_step, 0)
        if total != trainer.config.max_num_iterations:
            CONSOLE.log(f"{type(self.model).__name__}: the feature stage is {steps} step(s); the run ends at step "
                        f"{trainer._start_step + total - 1} (--max-num-iterations {trainer.config.max_num_iterations} "
                        "does not apply)")
            trainer.config.max_num_iterations = total

    def finish_if_last_step(self, step: int) -> None:
        """After the run's last step (before the trainer's final checkpoint): the model's ``finish_training``."""
        trainer = getattr(self, "_trainer", None)
        if trainer is None or step != trainer._start_step + trainer.config.max_num_iterations - 1:
            return
        if not (self.model.in_feature_stage and self.datamanager.masks_ready):
            return
        views = TrainingViews(self.datamanager.train_dataset.cameras, self.datamanager.load_train_masks(),
                              self.datamanager.train_mask_scales, self.datamanager.load_train_language())  # fmt: skip
        finish_started = time.perf_counter()
        with self.model_in_eval_mode():
            self.model.finish_training(views)
        self.write_stage_seconds(trainer, time.perf_counter() - finish_started)

    def write_stage_seconds(self, trainer, finish_seconds: float) -> None:
        """``stage_seconds.json`` beside config.yml: the feature stage's time inside this process (from the stage
        switch to the end of ``finish_training``: masks, scales, steps, finish), without ns-train's start-up."""
        started = getattr(self, "_feature_stage_started", None)
        if started is None:  # resumed inside the feature stage: this process did not see all of it
            return
        from segsplat_ns.io import atomic_open

        record = {"feature_stage_s": time.perf_counter() - started, "finish_training_s": finish_seconds}
        try:
            with atomic_open(Path(trainer.base_dir) / "stage_seconds.json") as handle:
                handle.write(json.dumps(record, indent=1).encode())
        except OSError as error:
            CONSOLE.print(f"could not write the stage times ({error}); the run itself is saved")

    @contextmanager
    def model_in_eval_mode(self) -> Iterator[None]:
        """The model in eval mode without gradients, its own mode restored afterwards (whatever happens)."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was_training)

    def load_pipeline(self, loaded_state, step: int) -> None:
        super().load_pipeline(loaded_state, step)
        if self.test_mode == "val":
            try:
                check_resume_stage(self.model, step)
            except user_error_types() as error:
                raise SystemExit(f"error: {error}") from None

    def checkpoint_rgb_stage(self, step: int) -> None:
        """Save the finished RGB stage (as step ``step - 1``, so --load-dir resumes at the stage switch) before
        masks and scales are prepared: a failure there then costs nothing already trained."""
        trainer = getattr(self, "_trainer", None)
        if trainer is None or step <= 0 or self.model.config.init_from is not None:
            return
        if step != self.model.feature_start_step or step <= getattr(trainer, "_start_step", 0):
            # not the switch from an RGB stage trained here (--load-dir resumed at or past it): the checkpoint it
            # resumed from is all there is, and past the switch it holds the feature stage, not the RGB stage
            return
        try:
            trainer.save_checkpoint(step - 1)
        except (OSError, RuntimeError) as error:
            CONSOLE.print(f"could not save the RGB stage before the feature stage ({error}); continuing")
            return
        CONSOLE.log(f"RGB stage saved (step {step - 1}) in {trainer.checkpoint_dir}: if the feature stage fails, "
                    "resume from it with --load-dir and the same flags")

    def get_train_loss_dict(self, step: int):
        if self.model.in_feature_stage and not self.datamanager.masks_ready:
            self.begin_feature_stage(step)
        return super().get_train_loss_dict(step)

    def begin_feature_stage(self, step: int) -> None:
        """Prepare masks and scales: at the stage switch (after saving the RGB stage), or on the first step of a
        --load-dir resume inside the feature stage (nothing to save then: the run resumed from that checkpoint)."""
        if step == self.model.feature_start_step:
            self.checkpoint_rgb_stage(step)
            self._feature_stage_started = time.perf_counter()
        else:  # this process does not see the whole feature stage: no stage_seconds.json (write_stage_seconds)
            CONSOLE.log(f"Resumed in the feature stage (step {step}): preparing its masks and 3D scales again")
        try:
            self.prepare_feature_stage()
        except user_error_types() as error:
            raise SystemExit(f"error: {error}") from None

    def prepare_feature_stage(self) -> None:
        """Extract (or load cached) 2D masks (and CLIP features, with a language source) and measure each mask's 3D
        scale with the RGB splat's depth."""
        cameras = self.datamanager.train_dataset.cameras
        raw_scales = []
        with self.model_in_eval_mode():
            if self.model.prompts_sam:
                source = self.datamanager.mask_source()
                if source.accepts_prompts:
                    self.datamanager.use_mask_prompts(self.model.sam_prompt_points(cameras))
                else:
                    CONSOLE.log(f"{type(self.model).__name__} places SAM's prompt points by depth; the {source.name} "
                                "mask source takes no prompts, so its masks are used as they are")
            masks = self.datamanager.load_train_masks()
            self.datamanager.load_train_language()  # None unless a language source is configured
            if not self.model.uses_mask_scales:
                # nothing reads them: no render per view (the scale quantiles stay unfitted, prompts are not sized)
                self.datamanager.set_mask_scales([torch.zeros(len(view_masks)) for view_masks in masks])
                CONSOLE.log(f"Feature stage: {sum(len(m) for m in masks)} masks over {len(masks)} images "
                            f"({type(self.model).__name__} does not use their 3D scales: not measured)")
                return
            for index in tqdm(range(len(masks)), desc="3D mask scales", unit="image"):
                camera = cameras[index : index + 1].to(self.device)
                outputs = self.model.get_outputs_for_camera(camera)
                depth = outputs["depth"][..., 0]
                valid = outputs["accumulation"][..., 0] > 0.5
                raw_scales.append(
                    mask_scales(
                        masks[index].to(depth.device),
                        depth,
                        camera.get_intrinsics_matrices()[0],
                        camera.camera_to_worlds[0],
                        valid=valid,
                    ).cpu()
                )
        all_scales = torch.cat(raw_scales)
        if all_scales.numel() == 0:
            raise RuntimeError("the mask source produced no masks for any training image: nothing to learn from")
        quantiles = ScaleQuantiles.fit(all_scales, num_quantiles=self.model.scale_quantiles.numel())
        self.model.scale_quantiles.copy_(quantiles.as_tensor().to(self.model.scale_quantiles))
        self.datamanager.set_mask_scales([quantiles.normalize(s) for s in raw_scales])
        CONSOLE.log(
            f"Feature stage: {all_scales.numel()} masks over {len(masks)} images, 3D scales "
            f"{float(all_scales.min()):.3g}..{float(all_scales.max()):.3g} (median {float(all_scales.median()):.3g})"
        )

    def get_average_eval_image_metrics(self, step: Optional[int] = None, output_path=None, get_std: bool = False):
        if len(self.datamanager.eval_dataset) == 0:  # nerfstudio would index the first of no metrics
            raise SystemExit(f"error: {no_eval_views_message(self.datamanager.data_dir)}")
        metrics = super().get_average_eval_image_metrics(step=step, output_path=output_path, get_std=get_std)
        if not self.model.has_features:
            return metrics
        try:
            ground_truth = self.datamanager.eval_ground_truth()
        except user_error_types() as error:
            # the image metrics already computed are kept (and written to eval.json) with a clear line
            CONSOLE.print(f"segmentation metrics skipped: {error}", markup=False)
            return metrics
        if ground_truth is None:
            CONSOLE.print(f"no segmentation ground truth (no {self.datamanager.data_dir / 'gt' / 'meta.json'}): "
                          "segmentation metrics skipped", markup=False)
            return metrics
        from segsplat_ns.eval.protocol import evaluate_segmentation
        from segsplat_ns.segmenter import Segmenter

        self.eval()
        segmenter = Segmenter(self.model)
        cameras = self.datamanager.eval_dataset.cameras
        seg_metrics, _ = evaluate_segmentation(segmenter, cameras, ground_truth, threshold=self.config.eval_threshold)
        metrics.update(seg_metrics)
        if ground_truth.text:
            metrics.update(self.text_eval_metrics(segmenter, cameras, ground_truth))
        self.train()
        return metrics

    def text_eval_metrics(self, segmenter, cameras, ground_truth) -> Dict[str, float]:
        """Text mIoU and localisation (LERF-OVS protocol) when the method has a text mode and the run has language
        features; otherwise a line saying why they are skipped."""
        from segsplat_ns.eval.text_protocol import text_metrics
        from segsplat_ns.language.context import language_context

        if not self.model.text_support:
            CONSOLE.print(f"text ground truth found, but {type(self.model).__name__} has no text mode: text metrics skipped")
            return {}
        try:
            segmenter.language = language_context(self)
        except user_error_types() as error:
            CONSOLE.print(f"text metrics skipped: {error}")
            return {}
        metrics, _ = text_metrics(segmenter, cameras, ground_truth)
        return metrics


def no_eval_views_message(data) -> str:
    """What to do when a dataset has no eval views (ns-eval measures on them)."""
    return (f"the dataset {data} has no eval views, so there is nothing for ns-eval to measure: list some images in "
            "the 'test_filenames' of its transforms.json (or drop its *_filenames lists so nerfstudio holds out 10 %)")


def check_resume_stage(model, step: int) -> None:
    """A checkpoint whose features were trained resumed with a larger ``rgb_steps`` (e.g. the flag not repeated)
    would silently go back to the RGB stage and move the geometry under frozen features: refuse it clearly."""
    from segsplat_ns.errors import InputError

    if model.config.init_from is None and bool(model.features_trained) and step < model.config.rgb_steps:
        raise InputError(
            f"the checkpoint (step {step}) is already in the feature stage, but --pipeline.model.rgb-steps is "
            f"{model.config.rgb_steps}, which would resume in the RGB stage and move the geometry under trained "
            f"features: repeat the run's --pipeline.model.rgb-steps (at most {step}; see its config.yml)"
        )
