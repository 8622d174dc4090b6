exports.main = async (event) => {
  await new Promise((r) => setTimeout(r, event.ms || 1000));
  return { slept: event.ms || 1000, pid: process.pid, uid: process.getuid() };
};
