// A storage trigger: records the COS records it gets, as a thumbnailer would read them.
const cloud = require('wx-server-sdk');
cloud.init({ env: cloud.DYNAMIC_CURRENT_ENV });
exports.main = async (event) => {
  for (const record of event.Records) {
    await cloud.database().collection('uploads').add({
      data: { name: record.event.eventName, key: record.cos.cosObject.key, size: record.cos.cosObject.size, fileID: record.cos.cosObject.fileID },
    });
  }
  return 'ok';
};
