"""FrameWeights: per-frame weight schedules (FRAME_WEIGHTS) for Apply IP-Adapter Batch, e.g. cross-fades."""

from __future__ import annotations

from ..ip_adapter.frame_schedule import TIMINGS, ScheduleSpec, frame_schedule, inverted, parse_values

MAX_FRAMES = 9999
MAX_INDEX = 1_000_000
MAX_SEED = 0xFFFFFFFFFFFFFFFF


class FrameWeights:
    DESCRIPTION = (
        "Makes one weight per latent frame for Apply IP-Adapter Batch: transitions through the given values (frames "
        "per transition, both ends included), with linear or eased timing (ease in starts slow, ease out starts "
        "fast), or the values as they are (custom). Keep a range of frames and pad with the first / last value. "
        "weights_inverted is 1 - w per frame: feed weights to one Batch apply and weights_inverted to another for a "
        "cross-fade between two references."
    )
    CATEGORY = "ip_adapter"
    FUNCTION = "make"
    RETURN_TYPES = ("FRAME_WEIGHTS", "FRAME_WEIGHTS", "INT")
    RETURN_NAMES = ("weights", "weights_inverted", "total_frames")
    OUTPUT_TOOLTIPS = ("One weight per frame.", "1 - w per frame: the cross-fade partner.",
                       "The number of frames (make the latent batch this long).")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        frame = {"min": 0, "max": MAX_INDEX, "step": 1}
        return {
            "required": {
                "weights": ("STRING", {"default": "1.0, 0.0", "multiline": True, "tooltip": "The values to pass "
                            "through, separated by commas (custom: one value per frame)."}),
                "timing": (list(TIMINGS), {"tooltip": "How each transition moves between two values: linear, ease "
                           "in (slow start), ease out (slow end), ease in-out, custom (the values as they are, one "
                           "per frame) or random (seeded values between the two)."}),
                "frames": ("INT", {"default": 16, "min": 1, "max": MAX_FRAMES, "tooltip": "Frames per transition "
                           "between two consecutive values, both ends included (transitions share their end)."}),
                "start_frame": ("INT", {**frame, "default": 0, "tooltip": "First frame of the schedule to keep."}),
                "end_frame": ("INT", {**frame, "default": 9999, "tooltip": "Keep the frames before this one."}),
                "add_starting_frames": ("INT", {**frame, "default": 0, "tooltip": "Frames of the first value "
                                        "added at the start."}),
                "add_ending_frames": ("INT", {**frame, "default": 0, "tooltip": "Frames of the last value added at "
                                      "the end."}),
                # control_after_generate off: the frontend adds one to every INT named seed unless told otherwise,
                # and a schedule should not change between runs.
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": False,
                                 "tooltip": "Seed of the random timing."}),
            },
        }

    def make(self, weights: str, timing: str, frames: int, start_frame: int, end_frame: int,
             add_starting_frames: int, add_ending_frames: int, seed: int) -> tuple[list[float], list[float], int]:
        spec = ScheduleSpec(parse_values(weights), timing, frames, start_frame, end_frame, add_starting_frames,
                            add_ending_frames, seed)
        schedule = frame_schedule(spec)
        return (schedule, inverted(schedule), len(schedule))
