// AudioWorklet: hands the page every block of the first input channel (Float32, the context's
// rate). The page packs blocks into 40 ms PCM16 messages; nothing is sent from the audio thread.
class PcmCapture extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) this.port.postMessage(channel.slice(0));
    return true;
  }
}
registerProcessor("pcm-capture", PcmCapture);
