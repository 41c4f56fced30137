"""`pipeline caption`: BLIP captions (and BLIP-VQA answers) for every row of a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from features.blip import CAPTION_MODEL, VQA_MODEL
from pipeline.commands import options


def parse_questions(text: str | None) -> tuple[str, ...] | None:
    """A file (one question a line) or 'q1;q2'; None keeps the defaults."""
    if text is None:
        return None
    p = Path(text).expanduser()
    items = p.read_text().splitlines() if p.is_file() else text.split(";")
    return tuple(q.strip() for q in items if q.strip())


@options.run_options(batch_size=16)
def command(
    in_path: Annotated[Path, typer.Option("--in", help="Input manifest (Parquet).")],
    out: Annotated[Path, typer.Option("--out", help="Output manifest: the input rows plus caption (and vqa) columns.")],
    model: Annotated[str, typer.Option("--model", help="BLIP captioner: HF id in the local cache, or a "
                                       "save_pretrained folder.")] = CAPTION_MODEL,
    beams: Annotated[int, typer.Option("--beams", min=1, help="1 = greedy; >1 = beam search.")] = 1,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 30,
    min_new_tokens: Annotated[int, typer.Option("--min-new-tokens", min=0)] = 0,
    vqa: Annotated[bool, typer.Option("--vqa/--no-vqa", help="Also ask BLIP-VQA the questions (~1 extra "
                                      "decode per question).")] = False,
    vqa_model: Annotated[str, typer.Option("--vqa-model", help="BLIP-VQA: HF id or folder.")] = VQA_MODEL,
    questions: Annotated[str | None, typer.Option("--questions", help="A file (one a line) or 'q1;q2'. "
                                                  "Default: mouth, eyes, eyebrows, facial expression.")] = None,
    vqa_max_new_tokens: Annotated[int, typer.Option("--vqa-max-new-tokens", min=1)] = 10,
    dtype: Annotated[str, typer.Option("--dtype", help="Autocast: auto (bf16 on CPU and GPU), bf16, fp16, "
                                       "fp32.")] = "auto",
    run_config=None,
) -> None:
    """Caption every face from its pixels alone, and report per class how often captions name an emotion."""
    from rich.console import Console

    from pipeline.caption import DEFAULT_QUESTIONS, CaptionConfig, CaptionError, CaptionStage, format_report
    from pipeline.commands.edge import cli_run

    console = Console(stderr=True, soft_wrap=True)
    run_cfg = run_config
    try:
        cfg = CaptionConfig(model=model, beams=beams, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                            vqa=vqa, vqa_model=vqa_model, questions=parse_questions(questions) or DEFAULT_QUESTIONS,
                            vqa_max_new_tokens=vqa_max_new_tokens, dtype=dtype)
    except (CaptionError, ValueError, OSError) as e:
        console.print(f"[red]pipeline caption: {e}")
        raise typer.Exit(2) from None
    report = cli_run(CaptionStage(cfg), in_path, out, run_cfg)
    words = report.summary.get("emotion_words", {})
    for field, per_class in words.items():
        console.print(f"\nLeakage check ({field}): rows whose text names an emotion, per class "
                      "(stored in the output's producer metadata)")
        console.print(format_report(per_class), markup=False, highlight=False)
