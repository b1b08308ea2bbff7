"""Lightning's rich model summary without the FLOPs it did not count.

Lightning counts FLOPs only in a forward pass on the model's ``example_input_array``; the toolkit's models set none,
so its summary's FLOPs column and total are always 0. This summary is the table alone when nothing was counted (the
parameter totals are the classifier's own ``parameters:`` line), and Lightning's own otherwise.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichModelSummary
from typing_extensions import override

#: the summary's column of counted FLOPs
FLOPS = "FLOPs"


class ModelSummary(RichModelSummary):
    """``RichModelSummary`` that prints only its table, without the FLOPs column, when no FLOPs were counted (always,
    without an ``example_input_array``)."""

    @staticmethod
    @override
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        if total_flops:
            RichModelSummary.summarize(
                summary_data,
                total_parameters,
                trainable_parameters,
                model_size,
                total_training_modes,
                total_flops,
                **summarize_kwargs,
            )
            return
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != FLOPS]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            right = name in ("Params", "Params per Device", "In sizes", "Out sizes")
            table.add_column(name, justify="right" if right else "left", style="dim" if name == " " else None)
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        get_console().print(table)  # the totals: the toolkit's own `parameters:` line says them
