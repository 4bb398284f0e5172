"""Training stages. Each says which networks it trains and how to compute one update; the loop in
onestep.train.loop runs any of them under Ray Train + DeepSpeed (or in one plain process)."""

from onestep.stages.teacher import TeacherStage

STAGES = {"teacher": TeacherStage}


def build_stage(cfg):
    try:
        return STAGES[cfg.train.stage](cfg)
    except KeyError:
        raise ValueError(f"train.stage: unknown stage {cfg.train.stage!r}; available: "
                         f"{', '.join(STAGES)}") from None
