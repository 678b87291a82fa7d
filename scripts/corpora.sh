# The generator corpora behind the shipped models; sourced by train_shipped.sh and fit_fusion_openset.sh.
# corpus DIR SEED DISTRACTORS builds one (1,200 songs, music21 drawn evenly) unless DIR holds it.
# FM_SHARE (default 0.75): share of previews rendered by msdmatch's FM synthesizer instead of
# fluidsynth (demo-data --fm-share), so that training hears FM timbres as well as sampled ones.
FM_SHARE=${FM_SHARE:-0.75}
corpus() {
  [ -f "$1/corpus.json" ] || \
      $MS demo-data "$1" --songs 1200 --distractors "$3" --seed "$2" --balanced --fm-share "$FM_SHARE"
}
