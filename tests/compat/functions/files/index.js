// Unmodified CloudBase code using storage from inside a function.
const cloud = require('wx-server-sdk');
cloud.init({ env: cloud.DYNAMIC_CURRENT_ENV });
exports.main = async (event) => {
  const up = await cloud.uploadFile({ cloudPath: event.path, fileContent: Buffer.from(event.text) });
  const urls = await cloud.getTempFileURL({ fileList: [up.fileID] });
  const down = await cloud.downloadFile({ fileID: up.fileID });
  const outside = event.outsideId ? (await cloud.downloadFile({ fileID: event.outsideId })).fileContent.toString() : null;
  const del = event.keep ? null : await cloud.deleteFile({ fileList: [up.fileID] });
  return { fileID: up.fileID, url: urls.fileList[0].tempFileURL, status: urls.fileList[0].status, text: down.fileContent.toString(), outside, deleted: del && del.fileList[0].status };
};
